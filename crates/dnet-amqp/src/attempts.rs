//! How many workers a request has stopped: a request whose delivery comes
//! back redelivered was held by a worker that ended without answering it
//! (killed, crashed, out of memory). The count travels in a header, because
//! the original's classic queue has no delivery count of its own.

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

/// The header with the number of workers that stopped while holding the request.
pub const ATTEMPTS_HEADER: &str = "x-dnet-attempts";

/// The count a delivery carries (0 without the header).
#[must_use]
pub fn attempts_of(properties: &BasicProperties) -> u32 {
    match properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ATTEMPTS_HEADER))
    {
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// `properties` with the count set to `attempts`.
#[must_use]
pub fn with_attempts(properties: BasicProperties, attempts: u32) -> BasicProperties {
    let mut headers: FieldTable = properties.headers().clone().unwrap_or_default();
    headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongUInt(attempts));
    properties.with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_round_trips_and_defaults_to_zero() {
        assert_eq!(attempts_of(&BasicProperties::default()), 0);
        assert_eq!(attempts_of(&with_attempts(BasicProperties::default(), 2)), 2);
    }
}
