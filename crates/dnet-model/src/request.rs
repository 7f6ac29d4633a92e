//! One request, bytes in, response out: decode, validate, forward, decide, encode.

use std::time::{Duration, Instant};

use dnet_proto::{ComputationRequest, ComputationResponse, Data, HopRecord, StatusCode};
use tch::Device;

use dnet_common::duration::micros;

use crate::codec;
use crate::decision::decide;
use crate::model::{MultiExitInception, SIDE_EXITS, TRUNK_LAYERS};

/// What a unit does with requests, besides the model itself.
#[derive(Clone, Debug)]
pub struct UnitSettings {
    /// Exit layer of this unit (1..=16).
    pub exit: usize,
    /// Thresholds of exits 1..=15.
    pub thresholds: [f64; SIDE_EXITS],
    /// Most samples accepted in one request.
    pub max_batch: usize,
    /// Name in this unit's hop record.
    pub unit_name: String,
    /// Where the model runs.
    pub device: Device,
}

/// Handles one serialized `ComputationRequest`; never fails: a bad request
/// becomes an ERROR response saying what was expected.
pub fn handle(
    model: &MultiExitInception,
    settings: &UnitSettings,
    body: &[u8],
    queue_wait: Duration,
) -> ComputationResponse {
    let started = Instant::now();
    // Decoded once: the hop record needs start_layer even when the request is refused.
    let request = dnet_codec::decode_request(body);
    let start_layer = request.as_ref().map_or(0, |r| r.start_layer);
    let mut response = request
        .and_then(|r| compute(model, settings, &r))
        .unwrap_or_else(|message| ComputationResponse {
            status: StatusCode::Error as i32,
            data: Some(Data::ErrorMessage(message)),
            ..ComputationResponse::default()
        });
    response.hops = vec![HopRecord {
        unit: settings.unit_name.clone(),
        start_layer,
        exit_layer: settings.exit as u64,
        queue_wait_us: micros(queue_wait),
        compute_us: micros(started.elapsed()),
        total_us: 0,
    }];
    response
}

fn compute(
    model: &MultiExitInception,
    settings: &UnitSettings,
    request: &ComputationRequest,
) -> Result<ComputationResponse, String> {
    let exit = settings.exit;
    let start = dnet_codec::check_start_layer(request.start_layer, exit)?;
    let x = codec::decode_x(&request.x, start, settings.max_batch).map_err(|e| e.to_string())?;
    let output = model
        .forward(&x.to_device(settings.device), start, exit)
        .map_err(|e| e.to_string())?;
    let threshold = (exit < TRUNK_LAYERS).then(|| settings.thresholds[exit - 1]);
    let decision = decide(&output.probs, threshold);
    let (status, data) = match (decision.exits, output.trunk) {
        (false, Some(trunk)) => {
            let x = codec::encode_x(&trunk).map_err(|e| e.to_string())?;
            (
                StatusCode::NotSuccess,
                Data::NextRequest(ComputationRequest {
                    start_layer: exit as u64,
                    x,
                }),
            )
        }
        _ => {
            let result = codec::encode_result(&decision.category, &output.probs).map_err(|e| e.to_string())?;
            (StatusCode::Success, Data::Result(result))
        }
    };
    Ok(ComputationResponse {
        status: status as i32,
        data: Some(data),
        exit_layer: if status == StatusCode::Success { exit as u64 } else { 0 },
        confidence: decision.min_confidence,
        hops: Vec::new(),
    })
}
