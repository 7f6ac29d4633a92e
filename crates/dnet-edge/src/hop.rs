//! This unit's record in `ComputationResponse.hops` (docs/architecture.md, "Hop records").

use std::time::Duration;

use dnet_proto::{ComputationRequest, ComputationResponse, Data, HopRecord};

/// Builds this unit's hop record from the request, the worker's reply and the
/// measured queue round trip. `total_us` is filled in when the call ends.
///
/// A computation unit may put its own partial record (compute time, exit
/// layer) first in `reply.hops`; workers that do not (the original Python
/// one) leave compute time at 0 and the exit layer is inferred.
#[must_use]
pub fn record(
    unit: &str,
    request: &ComputationRequest,
    reply: &ComputationResponse,
    round_trip: Duration,
) -> HopRecord {
    let worker = reply.hops.first();
    let compute_us = worker.map_or(0, |hop| hop.compute_us);
    let exit_layer = match (worker, &reply.data) {
        (Some(hop), _) if hop.exit_layer > 0 => hop.exit_layer,
        (_, Some(Data::NextRequest(next))) => next.start_layer,
        _ => reply.exit_layer,
    };
    HopRecord {
        unit: unit.to_owned(),
        start_layer: request.start_layer,
        exit_layer,
        queue_wait_us: micros(round_trip).saturating_sub(compute_us),
        compute_us,
        total_us: 0,
        batch_size: worker.map_or(0, |hop| hop.batch_size),
        threshold: worker.map_or(0.0, |hop| hop.threshold),
    }
}

pub use dnet_proto::micros;

#[cfg(test)]
mod tests {
    use super::*;
    use dnet_proto::StatusCode;

    #[test]
    fn takes_compute_time_from_the_worker_and_the_rest_as_queue_wait() {
        let request = ComputationRequest {
            start_layer: 4,
            x: Default::default(),
            ..ComputationRequest::default()
        };
        let reply = ComputationResponse {
            status: StatusCode::Success as i32,
            exit_layer: 8,
            hops: vec![HopRecord {
                exit_layer: 8,
                compute_us: 700,
                ..HopRecord::default()
            }],
            ..ComputationResponse::default()
        };
        let hop = record("edge:8080", &request, &reply, Duration::from_micros(1000));
        assert_eq!(
            (hop.start_layer, hop.exit_layer, hop.compute_us, hop.queue_wait_us),
            (4, 8, 700, 300)
        );
        assert_eq!(hop.unit, "edge:8080");
    }

    #[test]
    fn infers_the_exit_from_the_next_request_of_an_original_worker() {
        let request = ComputationRequest {
            start_layer: 0,
            x: Default::default(),
            ..ComputationRequest::default()
        };
        let reply = ComputationResponse {
            status: StatusCode::NotSuccess as i32,
            data: Some(Data::NextRequest(ComputationRequest {
                start_layer: 10,
                x: Default::default(),
                ..ComputationRequest::default()
            })),
            ..ComputationResponse::default()
        };
        let hop = record("u", &request, &reply, Duration::from_micros(50));
        assert_eq!((hop.exit_layer, hop.compute_us, hop.queue_wait_us), (10, 0, 50));
    }
}
