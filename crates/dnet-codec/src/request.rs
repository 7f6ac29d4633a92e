//! A serialized `ComputationRequest`, checked for a unit of exit layer E
//! (its `x` is checked by `parse_x`, when the unit builds the tensor).

use dnet_proto::ComputationRequest;
use prost::Message;

/// Decodes `body` and checks `0 <= start_layer < exit`; returns the request
/// and its start layer.
///
/// # Errors
/// A message saying what was expected: not a ComputationRequest, or a
/// start_layer outside `0..exit`.
pub fn parse_request(body: &[u8], exit: usize) -> Result<(ComputationRequest, usize), String> {
    let request = decode_request(body)?;
    let start = check_start_layer(request.start_layer, exit)?;
    Ok((request, start))
}

/// Decodes a serialized `ComputationRequest`. From a `Bytes` buffer, `x`
/// is a slice of it, not a copy.
///
/// # Errors
/// The bytes are not a ComputationRequest.
pub fn decode_request(body: impl prost::bytes::Buf) -> Result<ComputationRequest, String> {
    ComputationRequest::decode(body).map_err(|e| format!("the message is not a serialized ComputationRequest ({e})"))
}

/// Checks that a unit of exit layer `exit` can start at `start_layer`.
///
/// # Errors
/// `start_layer` outside `0..exit`, with the accepted range.
pub fn check_start_layer(start_layer: u64, exit: usize) -> Result<usize, String> {
    usize::try_from(start_layer).ok().filter(|&start| start < exit).ok_or_else(|| {
        format!("start_layer {start_layer} is out of range: this unit (exit layer {exit}) accepts 0 <= start_layer < {exit}")
    })
}

/// Side exits, each with a threshold: exits 1..15.
pub const SIDE_EXITS: usize = 15;

/// Checks a request's own thresholds: none, or one per side exit, each in 0..=1.
///
/// # Errors
/// Another count, or a value outside 0..=1 (NaN included).
pub fn check_thresholds(values: &[f64]) -> Result<Option<[f64; SIDE_EXITS]>, String> {
    if values.is_empty() {
        return Ok(None);
    }
    let values: [f64; SIDE_EXITS] = values.try_into().map_err(|_| {
        format!(
            "the request carries {} thresholds: give none, or 15 (exits 1..15)",
            values.len()
        )
    })?;
    match values.iter().position(|t| !(0.0..=1.0).contains(t)) {
        Some(i) => Err(format!(
            "the request's threshold of exit {} is {}, outside 0..1",
            i + 1,
            values[i]
        )),
        None => Ok(Some(values)),
    }
}
