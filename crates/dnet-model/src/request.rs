//! One request's way through a unit, around the forward pass: bytes in,
//! checked and decoded ([`prepare`]); a slice of a batch's outputs, decided
//! and encoded ([`respond`]).

use std::time::Duration;

use dnet_proto::{micros, ComputationRequest, ComputationResponse, Data, HopRecord, StatusCode};
use tch::{Device, Tensor};

use crate::codec;
use crate::decision::{decide, Decision, ExitRule};
use crate::model::{SIDE_EXITS, TRUNK_LAYERS};
use crate::settings::{OverrideBounds, WireDtype};
use crate::thresholds::{check_override, LiveThresholds};

/// What a unit does with requests, besides the model itself.
#[derive(Clone, Debug)]
pub struct UnitSettings {
    /// Exit layer of this unit (1..=16).
    pub exit: usize,
    /// Thresholds of exits 1..=15 (they may change while the unit runs).
    pub thresholds: LiveThresholds,
    /// What a request of N samples does when only some are confident.
    pub exit_rule: ExitRule,
    /// The thresholds of this unit's exit a request may carry; `None`: no
    /// request may carry thresholds (exit 16 takes any: it has none).
    pub allow_threshold_override: Option<OverrideBounds>,
    /// Most samples accepted in one request.
    pub max_request_samples: usize,
    /// Units a request may have ended (died holding it) before it is
    /// answered ERROR instead of computed (a poison request).
    pub max_attempts: u32,
    /// Largest message this unit may send: a request whose tensor for the
    /// next unit would not fit is refused before it is computed.
    pub max_message_bytes: usize,
    /// Name in this unit's hop record.
    pub unit_name: String,
    /// Where the model runs.
    pub device: Device,
    /// The dtype of the tensor handed on (NOT_SUCCESS).
    pub wire_dtype: WireDtype,
    /// Read the original DNet's tensor pickles, and answer them in its format.
    pub legacy_pickle: bool,
}

impl UnitSettings {
    /// A unit of exit `exit` with `thresholds`, on the CPU, with the
    /// programs' defaults for the rest (in-process users: tests, benchmarks,
    /// the test client's local layers).
    #[must_use]
    pub fn new(exit: usize, thresholds: [f64; SIDE_EXITS], unit_name: &str) -> UnitSettings {
        UnitSettings {
            exit,
            thresholds: LiveThresholds::new(thresholds),
            exit_rule: ExitRule::PerSample,
            allow_threshold_override: None,
            max_request_samples: 64,
            max_attempts: 3,
            max_message_bytes: 64 << 20,
            unit_name: unit_name.to_owned(),
            device: Device::Cpu,
            wire_dtype: WireDtype::F32,
            legacy_pickle: false,
        }
    }
}

/// A request checked and decoded, ready to join a batch.
#[derive(Debug)]
pub struct Prepared {
    /// Trunk layers already applied to `x`.
    pub start: usize,
    /// [N, C, H, W], F32, on the CPU.
    pub x: Tensor,
    /// N.
    pub samples: usize,
    /// `x` came as the original DNet's pickle: the reply goes in its format too.
    pub pickled: bool,
    /// The request's own thresholds (checked against this unit's bounds),
    /// handed on with it (boxed: most requests carry none).
    pub thresholds: Option<Box<[f64; SIDE_EXITS]>>,
    /// Units that ended holding it so far; handed on with it.
    pub attempts: u32,
    /// Shadow work: computed only when nothing else waits, never answered
    /// early, handed on to the last exit.
    pub shadow: bool,
    /// Share of the samples answered here to send on as shadow work (0..=1).
    pub shadow_rate: f32,
}

impl Prepared {
    /// A request from `start` on `x` with the unit's own thresholds.
    #[must_use]
    pub fn new(start: usize, x: Tensor) -> Prepared {
        let samples = usize::try_from(x.size().first().copied().unwrap_or(0)).unwrap_or(0);
        Prepared {
            start,
            x,
            samples,
            pickled: false,
            thresholds: None,
            attempts: 0,
            shadow: false,
            shadow_rate: 0.0,
        }
    }
}

/// A request refused before computing: the start layer it claimed (for its
/// hop record) and what was wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub start_layer: u64,
    pub message: String,
}

/// Decodes a serialized `ComputationRequest` and checks it for this unit.
///
/// # Errors
/// A message saying what was expected: not a ComputationRequest, a
/// `start_layer` outside `0..exit`, or an `x` that does not fit it.
pub fn prepare(body: impl prost::bytes::Buf, settings: &UnitSettings) -> Result<Prepared, Refused> {
    let request = dnet_codec::decode_request(body).map_err(|message| Refused {
        start_layer: 0,
        message,
    })?;
    prepare_request(&request, settings)
}

/// Checks a decoded request for this unit and decodes its `x`.
///
/// # Errors
/// See [`prepare`].
pub fn prepare_request(request: &ComputationRequest, settings: &UnitSettings) -> Result<Prepared, Refused> {
    let refused = |message: String| Refused {
        start_layer: request.start_layer,
        message,
    };
    if request.attempts >= settings.max_attempts {
        return Err(refused(poisoned_message(request.attempts, settings.max_attempts)));
    }
    let start = dnet_codec::check_start_layer(request.start_layer, settings.exit).map_err(refused)?;
    let thresholds = dnet_codec::check_thresholds(&request.thresholds).map_err(refused)?;
    if let Some(thresholds) = &thresholds {
        check_override(thresholds, settings.exit, settings.allow_threshold_override).map_err(refused)?;
    }
    let pickled = settings.legacy_pickle && dnet_codec::pickle::looks_like_pickle(&request.x);
    let x = if pickled {
        codec::decode_pickled_x(&request.x, start, settings.max_request_samples)
    } else {
        codec::decode_x(&request.x, start, settings.max_request_samples)
    }
    .map_err(|e| refused(e.to_string()))?;
    let samples = usize::try_from(x.size()[0]).map_err(|e| refused(e.to_string()))?;
    if let Some(bytes) = reply_bytes(settings.exit, samples).filter(|&b| b > settings.max_message_bytes) {
        return Err(refused(format!(
            "x of {samples} samples would hand on {bytes} bytes at exit {} if not confident, over the message \
             limit of {} bytes (--max-message-bytes): send fewer samples per request",
            settings.exit, settings.max_message_bytes
        )));
    }
    Ok(Prepared {
        start,
        x,
        samples,
        pickled,
        thresholds: thresholds.map(Box::new),
        attempts: request.attempts,
        shadow: request.shadow,
        // A rate outside 0..=1 (or NaN) samples nothing or everything, no more.
        shadow_rate: if request.shadow_rate.is_nan() {
            0.0
        } else {
            request.shadow_rate.clamp(0.0, 1.0)
        },
    })
}

/// The ERROR message of a request that `attempts` units ended holding.
#[must_use]
pub fn poisoned_message(attempts: u32, max_attempts: u32) -> String {
    format!("this request stopped {attempts} workers (--max-attempts {max_attempts}): it is not computed again")
}

/// Room a handed-on `x` takes besides its values: the safetensors header and
/// the `ComputationResponse` around it.
const HAND_ON_OVERHEAD: usize = 1024;
/// Bytes per sample of a reply's answer rows (`answered`): category (I64),
/// ten probabilities (F32) and the exit layer (I64).
const ANSWER_ROW_BYTES: usize = 8 + 10 * 4 + 8;
/// The safetensors header of the answer rows.
const ANSWER_HEADER: usize = 256;

/// Bytes of the largest reply to `samples` at `exit`: the tensor handed on
/// (F32) and the answer rows of the samples answered here (per-sample exits
/// send both), or `None` at exit 16, which never hands on.
#[must_use]
pub fn reply_bytes(exit: usize, samples: usize) -> Option<usize> {
    let shape = dnet_codec::BOUNDARY_SHAPES.get(exit)?;
    let per_sample = shape.iter().product::<usize>() * 4 + ANSWER_ROW_BYTES;
    Some(
        samples
            .saturating_mul(per_sample)
            .saturating_add(HAND_ON_OVERHEAD + ANSWER_HEADER),
    )
}

/// The largest message a unit of `exit` may have to read or send for
/// requests of `samples`: an `x` at any start layer it accepts (0..exit),
/// or its reply.
#[must_use]
pub fn largest_message(exit: usize, samples: usize) -> usize {
    let incoming = dnet_codec::BOUNDARY_SHAPES[..exit.min(dnet_codec::BOUNDARY_SHAPES.len())]
        .iter()
        .map(|shape| samples.saturating_mul(shape.iter().product::<usize>() * 4) + HAND_ON_OVERHEAD)
        .max()
        .unwrap_or(0);
    incoming.max(reply_bytes(exit, samples).unwrap_or(0))
}

/// This unit's hop record for a request that started at `start_layer`,
/// waited `queue_wait` and ran in a forward pass of `batch_size` samples
/// (0: refused before computing) that took `compute`.
#[must_use]
pub fn hop_record(
    settings: &UnitSettings,
    start_layer: u64,
    queue_wait: Duration,
    compute: Duration,
    batch_size: usize,
) -> HopRecord {
    HopRecord {
        threshold: 0.0,
        unit: settings.unit_name.clone(),
        start_layer,
        exit_layer: settings.exit as u64,
        queue_wait_us: micros(queue_wait),
        compute_us: micros(compute),
        total_us: 0,
        batch_size: u32::try_from(batch_size).unwrap_or(u32::MAX),
    }
}

/// The ERROR answer to a refused request, with its hop record (`checked`:
/// the time spent finding the problem).
#[must_use]
pub fn refusal(settings: &UnitSettings, refused: Refused, checked: Duration) -> ComputationResponse {
    let mut response = error_response(refused.message);
    response.hops = vec![hop_record(settings, refused.start_layer, Duration::ZERO, checked, 0)];
    response
}

/// An ERROR response carrying `message`.
#[must_use]
pub fn error_response(message: String) -> ComputationResponse {
    ComputationResponse {
        status: StatusCode::Error as i32,
        data: Some(Data::ErrorMessage(message)),
        ..ComputationResponse::default()
    }
}

/// The threshold this unit's exit decides `request` with: the request's own
/// entry, else the unit's; `None` at exit 16 (it answers every sample).
#[must_use]
pub fn effective_threshold(settings: &UnitSettings, request: &Prepared) -> Option<f64> {
    if settings.exit >= TRUNK_LAYERS {
        return None;
    }
    let thresholds = request
        .thresholds
        .as_deref()
        .copied()
        .unwrap_or_else(|| settings.thresholds.get());
    Some(thresholds[settings.exit - 1])
}

/// Decides and encodes one request's answer from its slice of a forward's
/// outputs: `probs` [N, 10] and, below exit 16, `trunk` (the tensor to hand
/// on). A request in the original DNet's format (`pickled`: `x` an F32
/// pickle, `result` the pickled categories) exits as a whole: its format has
/// no room for per-sample exits. Shadow work never exits here below exit 16.
///
/// A NOT_SUCCESS reply (but to pickles and shadow work) carries every
/// sample's row of this exit in `answered` (exit layer 0 where handed on);
/// with `shadow_rate` > 0, a sampled share of the samples answered here
/// comes back as `shadow` work for the next unit.
///
/// # Errors
/// A tensor that cannot be encoded.
pub fn respond(
    settings: &UnitSettings,
    request: &Prepared,
    probs: &Tensor,
    trunk: Option<&Tensor>,
) -> Result<ComputationResponse, String> {
    let exit = settings.exit;
    let threshold = effective_threshold(settings, request);
    let mut decision = decide(probs, threshold)?;
    if request.shadow && trunk.is_some() {
        decision.confident.fill(false);
    }
    let per_sample = settings.exit_rule == ExitRule::PerSample && !request.pickled;
    if !per_sample && !decision.all_confident() {
        decision.confident.fill(false);
    }
    let mut response = ComputationResponse {
        confidence: decision.min_confidence,
        ..ComputationResponse::default()
    };
    if let Some(trunk) = trunk.filter(|_| request.shadow_rate > 0.0 && !request.pickled && !request.shadow) {
        let sampled: Vec<i64> = (0..)
            .zip(&decision.confident)
            .filter(|&(_, &confident)| confident && fastrand::f32() < request.shadow_rate)
            .map(|(i, _)| i)
            .collect();
        if !sampled.is_empty() {
            response.shadow = Some(shadow_work(settings, trunk, &sampled)?);
            response.shadow_rows = sampled.iter().map(|&i| i as u32).collect();
        }
    }
    let Some(trunk) = trunk.filter(|_| !decision.all_confident()) else {
        let result = if request.pickled {
            codec::encode_pickle(&decision.category)
        } else {
            codec::encode_result(&decision.category, probs, &exit_layers(&decision, exit))
        }
        .map_err(|e| e.to_string())?;
        response.status = StatusCode::Success as i32;
        response.data = Some(Data::Result(result.into()));
        response.exit_layer = exit as u64;
        return Ok(response);
    };
    if !request.pickled && !request.shadow {
        let answered = codec::encode_result(&decision.category, probs, &exit_layers(&decision, exit));
        response.answered = answered.map_err(|e| e.to_string())?.into();
    }
    let hand_on = if decision.none_confident() {
        trunk.shallow_clone()
    } else {
        let pending: Vec<i64> = (0..)
            .zip(&decision.confident)
            .filter(|(_, &c)| !c)
            .map(|(i, _)| i)
            .collect();
        trunk.index_select(0, &Tensor::from_slice(&pending))
    };
    let x = if request.pickled {
        codec::encode_pickle(&hand_on)
    } else {
        codec::encode_x(&hand_on.to_kind(settings.wire_dtype.kind()))
    }
    .map_err(|e| e.to_string())?;
    response.status = StatusCode::NotSuccess as i32;
    response.data = Some(Data::NextRequest(ComputationRequest {
        start_layer: exit as u64,
        x: x.into(),
        thresholds: request.thresholds.as_deref().map(|t| t.to_vec()).unwrap_or_default(),
        attempts: request.attempts,
        shadow: request.shadow,
        shadow_rate: 0.0,
    }));
    Ok(response)
}

/// The request for the next unit that carries the `rows` of `trunk` as
/// shadow work.
fn shadow_work(settings: &UnitSettings, trunk: &Tensor, rows: &[i64]) -> Result<ComputationRequest, String> {
    let x = trunk.index_select(0, &Tensor::from_slice(rows));
    let x = codec::encode_x(&x.to_kind(settings.wire_dtype.kind())).map_err(|e| e.to_string())?;
    Ok(ComputationRequest {
        start_layer: settings.exit as u64,
        x: x.into(),
        shadow: true,
        ..ComputationRequest::default()
    })
}

/// Each sample's exit layer, I64 [N]: `exit` where confident (answered
/// here), 0 where handed on.
fn exit_layers(decision: &Decision, exit: usize) -> Tensor {
    let exits: Vec<i64> = decision
        .confident
        .iter()
        .map(|&confident| if confident { exit as i64 } else { 0 })
        .collect();
    Tensor::from_slice(&exits)
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;
    use crate::model::DEFAULT_THRESHOLDS;

    #[test]
    fn the_reply_size_check_counts_the_answer_rows_too() {
        // At exit 8 a sample handed on is 288 x 24 x 24 F32; with per-sample
        // exits the reply also carries every sample's answer row.
        let samples = 64;
        let handed_on_only = samples * 288 * 24 * 24 * 4 + HAND_ON_OVERHEAD;
        let mut settings = UnitSettings::new(8, DEFAULT_THRESHOLDS, "request-test");
        settings.max_message_bytes = handed_on_only;
        let x = Tensor::zeros([samples as i64, 3, 32, 32], (Kind::Float, Device::Cpu));
        let request = ComputationRequest {
            x: codec::encode_x(&x).expect("encodes").into(),
            ..ComputationRequest::default()
        };
        let refused = prepare_request(&request, &settings).expect_err("the answer rows do not fit");
        assert!(refused.message.contains("--max-message-bytes"), "{}", refused.message);
        settings.max_message_bytes = reply_bytes(8, samples).expect("exit 8 hands on");
        assert!(prepare_request(&request, &settings).is_ok());
    }
}
