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
