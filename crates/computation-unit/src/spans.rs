//! The computation's spans, when traces are on (`--otlp-endpoint`): the
//! worker's or direct unit's `dnet.computation` (from a request's arrival to
//! its reply, with what the exit decided), and inside it, from the hop
//! record the model thread measured, `dnet.model_wait` (waiting for the
//! model and for the batch) and `dnet.forward` (the forward pass the request
//! ran in). The hop record and the spans report the same measurements.

use std::time::{Duration, SystemTime};

use dnet_common::traces;
use dnet_proto::{ComputationResponse, StatusCode};
use opentelemetry::KeyValue;
use tracing::{field, info_span, Span};

/// The computation's span (`kind`: `consumer` for a queue's worker,
/// `internal` for a direct unit); none when traces are off.
pub fn computation_span(kind: &'static str) -> Span {
    traces::span(|| {
        info_span!(
            "dnet.computation",
            otel.kind = kind,
            dnet.unit = field::Empty,
            dnet.start_layer = field::Empty,
            dnet.exit_layer = field::Empty,
            dnet.batch_size = field::Empty,
            dnet.confidence = field::Empty,
            dnet.status = field::Empty,
        )
    })
}

/// Records what the computation of `response` did on `span`, and its
/// model wait and forward pass as child spans ending now.
pub fn computed(span: &Span, response: &ComputationResponse) {
    if span.is_none() {
        return;
    }
    // The exporter ends a span at its last exit: entered here, it ends
    // after the child spans drawn below.
    let _inside = span.enter();
    let status = StatusCode::try_from(response.status).map_or("UNKNOWN_STATUS", |s| s.as_str_name());
    span.record("dnet.status", status);
    span.record("dnet.confidence", f64::from(response.confidence));
    let Some(hop) = response.hops.first() else {
        return;
    };
    span.record("dnet.unit", hop.unit.as_str());
    span.record("dnet.start_layer", hop.start_layer);
    span.record("dnet.exit_layer", hop.exit_layer);
    span.record("dnet.batch_size", hop.batch_size);
    if hop.batch_size == 0 {
        // Refused before computing: no forward pass.
        return;
    }
    let ended = SystemTime::now();
    let forward_started = ended - Duration::from_micros(hop.compute_us);
    let batch = KeyValue::new("dnet.batch_size", i64::from(hop.batch_size));
    traces::record_span(
        span,
        "dnet.model_wait",
        forward_started - Duration::from_micros(hop.queue_wait_us),
        forward_started,
        vec![batch.clone()],
    );
    traces::record_span(span, "dnet.forward", forward_started, ended, vec![batch]);
}
