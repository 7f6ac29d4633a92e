//! Tracing set-up shared by the binaries.

use std::io::IsTerminal;

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::traces;

/// Default filter when `RUST_LOG` is unset: our logs at info, chatty
/// libraries at warn. The span exporter's own logs are off: an unreachable
/// collector would log every failed batch, many lines a second under load
/// (`RUST_LOG=info,opentelemetry_sdk=warn,opentelemetry_otlp=warn` shows them).
const DEFAULT_FILTER: &str =
    "info,lapin=warn,h2=warn,tower=warn,hyper=warn,opentelemetry_sdk=off,opentelemetry_otlp=off,opentelemetry=off";

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Flags both programs share: logging and the metrics endpoint.
#[derive(Clone, Debug, clap::Args)]
pub struct ObservabilityArgs {
    /// Address of the Prometheus endpoint (/metrics); off when unset.
    #[arg(long, env = "DNET_METRICS_ADDRESS")]
    pub metrics_address: Option<String>,

    /// Log line format.
    #[arg(long, env = "DNET_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// OTLP (gRPC) endpoint to export traces to, e.g. http://collector:4317: spans of each call,
    /// its queue round trip, computation and forward pass, in the trace of the caller's
    /// `traceparent` (or a new one), carried on to the next units. Off when unset
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Installs the global tracing subscriber (`RUST_LOG` overrides the log
/// filter) and, with an OTLP endpoint, the span exporter, named `service`:
/// keep what it returns alive until the program ends (it flushes the last
/// spans when dropped).
///
/// # Errors
/// An OTLP endpoint that cannot be used.
pub fn init(observability: &ObservabilityArgs, service: &str) -> anyhow::Result<Option<traces::Exporting>> {
    let format = observability.log_format;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let ansi = colour(format, std::io::stderr().is_terminal(), no_color);
    // An empty value (a compose file's `${OTEL_EXPORTER_OTLP_ENDPOINT:-}`) is unset.
    let Some(endpoint) = observability.otlp_endpoint.as_deref().filter(|e| !e.trim().is_empty()) else {
        // Without traces, the plain subscriber with a global filter: a
        // disabled log callsite costs nothing (its interest is cached).
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(std::io::stderr);
        match format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().flatten_event(true).init(),
        }
        return Ok(None);
    };
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // The log filter for log lines only: the span layer takes DNet's spans
    // whatever RUST_LOG says of log lines.
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => lines.with_filter(filter).boxed(),
        LogFormat::Json => lines.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let (tracer, exporting) = traces::start(endpoint, service)?;
    let ours = filter_fn(|metadata| metadata.is_span() && metadata.name().starts_with("dnet."));
    let spans = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(ours);
    tracing_subscriber::registry().with(lines).with(spans).init();
    Ok(Some(exporting))
}

/// Whether log lines carry ANSI colour codes: only text lines to a terminal,
/// and not when `NO_COLOR` is set (no-color.org). In a file or a pipe the
/// codes are noise a reader must strip.
fn colour(format: LogFormat, stderr_is_terminal: bool, no_color: bool) -> bool {
    format == LogFormat::Text && stderr_is_terminal && !no_color
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_for_text_on_a_terminal_without_no_color() {
        assert!(colour(LogFormat::Text, true, false));
        assert!(!colour(LogFormat::Text, false, false), "a file or a pipe");
        assert!(!colour(LogFormat::Text, true, true), "NO_COLOR");
        assert!(!colour(LogFormat::Json, true, false), "JSON lines");
    }
}
