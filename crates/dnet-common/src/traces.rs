//! Traces across the chain: a call's W3C trace context (`traceparent`,
//! `tracestate`) comes in with its gRPC metadata or AMQP headers, goes on
//! with the calls and messages this unit sends, and this unit's spans go out
//! over OTLP (gRPC) to `--otlp-endpoint`. Off unless that is set: then no
//! span is created at all ([`span`] gives `Span::none()`), so tracing costs
//! nothing when unused.
//!
//! Spans are `tracing` spans named `dnet.*`, exported by
//! `tracing-opentelemetry`; a span whose times were measured elsewhere (a
//! forward pass in the engine's thread) is made with the OpenTelemetry API
//! and explicit timestamps ([`record_span`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry::{global, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The headers that carry a trace context (W3C Trace Context).
pub const HEADERS: [&str; 2] = ["traceparent", "tracestate"];
/// The instrumentation scope of every DNet span.
const SCOPE: &str = "dnet";
/// The longest one export may take.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (`--otlp-endpoint` was set).
#[must_use]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// `make()`'s span when traces are on, else `Span::none()` without calling it.
pub fn span(make: impl FnOnce() -> Span) -> Span {
    if enabled() {
        make()
    } else {
        Span::none()
    }
}

/// Keeps the exporter running; flushes the spans still buffered when dropped.
pub struct Exporting {
    provider: SdkTracerProvider,
    // The exporter's own runtime: tonic needs a tokio reactor, and the
    // programs' runtimes may not exist yet (the worker's) or be busy.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Exporting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporting")
    }
}

impl Drop for Exporting {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("traces: the last spans were not exported: {error}");
        }
        if let Some(runtime) = self.runtime.take() {
            // Dropped from a program's async main, where blocking is not allowed.
            runtime.shutdown_background();
        }
    }
}

/// Starts exporting spans to `endpoint` (`http://host:4317`, plain gRPC) as
/// `service`; the tracer for `tracing-opentelemetry`'s layer, and the guard.
///
/// # Errors
/// An endpoint that is not an `http://` URI, or a runtime that cannot start.
pub fn start(endpoint: &str, service: &str) -> anyhow::Result<(SdkTracer, Exporting)> {
    if !endpoint.starts_with("http://") {
        anyhow::bail!(
            "--otlp-endpoint {endpoint}: give an http:// address (OTLP over plain gRPC, e.g. http://collector:4317; \
             a collector beside the unit, or a sidecar, carries it further)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()?;
    let exporter = {
        let _entered = runtime.enter();
        SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            // A collector that stops answering must not hold a unit's
            // shutdown for long: each export gives up after this.
            .with_timeout(EXPORT_TIMEOUT)
            .build()
    };
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(error) => {
            // Dropped here, inside a program's async main, a runtime panics.
            runtime.shutdown_background();
            anyhow::bail!("--otlp-endpoint {endpoint}: {error}");
        }
    };
    // The processor's task runs on the exporter's runtime.
    let processor = {
        let _entered = runtime.enter();
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build()
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(Resource::builder().with_service_name(service.to_owned()).build())
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    ON.store(true, Ordering::Relaxed);
    let tracer = provider.tracer(SCOPE);
    Ok((
        tracer,
        Exporting {
            provider,
            runtime: Some(runtime),
        },
    ))
}

/// Makes `span` a child of the trace context that `header` reads (a gRPC
/// call's metadata, a message's headers); a root when there is none.
pub fn continue_trace(span: &Span, header: impl Fn(&str) -> Option<String>) {
    if span.is_none() {
        return;
    }
    let carrier: HashMap<String, String> = HEADERS
        .iter()
        .filter_map(|name| header(name).map(|value| ((*name).to_owned(), value)))
        .collect();
    if carrier.is_empty() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    // Fails only for a span already started elsewhere: it stays a root.
    let _ = span.set_parent(parent);
}

/// The headers that carry `span`'s trace context on to the next unit or
/// worker; none when traces are off.
#[must_use]
pub fn headers_of(span: &Span) -> Vec<(&'static str, String)> {
    if span.is_none() {
        return Vec::new();
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    HEADERS
        .iter()
        .filter_map(|name| carrier.remove(*name).map(|value| (*name, value)))
        .collect()
}

/// A span measured elsewhere (`start` to `end`), child of `parent`.
pub fn record_span(parent: &Span, name: &'static str, start: SystemTime, end: SystemTime, attributes: Vec<KeyValue>) {
    if parent.is_none() {
        return;
    }
    let tracer = global::tracer(SCOPE);
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent.context());
    span.end_with_timestamp(end);
}
