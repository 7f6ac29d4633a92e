//! An OTLP trace receiver for tests: the OpenTelemetry collector's trace
//! service (gRPC, `opentelemetry-proto`), keeping every span the programs
//! export, on a free loopback port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::wait::wait_for;

/// One span as received.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// The exporting program (`service.name` of its resource).
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// Attributes as text (numbers in Rust's formatting).
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// How long it lasted.
    #[must_use]
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nano.saturating_sub(self.start_unix_nano))
    }

    /// An attribute's value.
    #[must_use]
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| text_attributes(&r.attributes).remove("service.name"))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    attributes: text_attributes(&span.attributes),
                });
            }
        }
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend(spans);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running receiver; stops on drop.
pub struct OtlpReceiver {
    pub address: SocketAddr,
    received: Received,
    server: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts listening on a free loopback port.
    ///
    /// # Errors
    /// No port to bind.
    pub async fn start() -> anyhow::Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let received = Received::default();
        let service = TraceServiceServer::new(received.clone());
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(OtlpReceiver {
            address,
            received,
            server,
        })
    }

    /// The value for `--otlp-endpoint`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far.
    #[must_use]
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The spans of `trace_id` once `complete` says they are all there,
    /// within `patience`.
    ///
    /// # Errors
    /// `complete` still false after `patience`, with what was received.
    pub async fn trace(
        &self,
        trace_id: &str,
        patience: Duration,
        complete: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedSpan>> {
        let of_trace =
            || -> Vec<ReceivedSpan> { self.spans().into_iter().filter(|s| s.trace_id == trace_id).collect() };
        wait_for("the trace's spans", patience, || async {
            let spans = of_trace();
            complete(&spans).then_some(spans)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}; received of trace {trace_id}: {:#?}", of_trace()))
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text_attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::BoolValue(b) => b.to_string(),
                Value::IntValue(i) => i.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}
