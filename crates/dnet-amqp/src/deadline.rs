//! The deadline contract on the queue (docs/architecture.md, "Deadlines"):
//! a request is published with the AMQP per-message `expiration` set to its
//! caller's remaining time, so the broker drops it unread once it expires at
//! the head of the queue, and with a header carrying the absolute deadline,
//! so a worker that already holds it can tell. Queue arguments do not change.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

/// The header with a request's deadline in milliseconds since the Unix epoch.
pub const DEADLINE_HEADER: &str = "x-dnet-deadline-ms";

/// `properties` of a request due at `deadline`: `expiration` = the time left
/// (whole milliseconds, at least 1) and the deadline header.
#[must_use]
pub fn with_deadline(properties: BasicProperties, deadline: Instant) -> BasicProperties {
    let left = deadline.saturating_duration_since(Instant::now());
    let millis = left.as_millis().max(1);
    let due = SystemTime::now() + left;
    let due_ms = due.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        DEADLINE_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(due_ms).unwrap_or(i64::MAX)),
    );
    properties
        .with_expiration(ShortString::from(millis.to_string()))
        .with_headers(headers)
}

/// The deadline a delivery carries, on this host's clock: `None` without the
/// header (the original transmission unit sends none: no deadline). The
/// hosts' clocks must agree to well under the deadlines used.
#[must_use]
pub fn deadline_of(properties: &BasicProperties) -> Option<Instant> {
    let due_ms = match properties.headers().as_ref()?.inner().get(DEADLINE_HEADER)? {
        AMQPValue::LongLongInt(ms) => u64::try_from(*ms).ok()?,
        AMQPValue::LongUInt(ms) => u64::from(*ms),
        AMQPValue::LongInt(ms) => u64::try_from(*ms).ok()?,
        _ => return None,
    };
    let due = UNIX_EPOCH + Duration::from_millis(due_ms);
    let now = Instant::now();
    Some(match due.duration_since(SystemTime::now()) {
        Ok(left) => now + left,
        // Already past: as far in the past as it is, or at least "now".
        Err(past) => now.checked_sub(past.duration()).unwrap_or(now),
    })
}

/// Deadline header helper for tests and tools: the header table of a delivery due at `due_ms`.
#[must_use]
pub fn headers_due_at(due_ms: i64) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(DEADLINE_HEADER.into(), AMQPValue::LongLongInt(due_ms));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_survives_the_round_trip_through_properties() {
        let deadline = Instant::now() + Duration::from_millis(1500);
        let properties = with_deadline(BasicProperties::default(), deadline);
        let expiration: u64 = properties
            .expiration()
            .as_ref()
            .map(|e| e.as_str().parse().expect("milliseconds"))
            .expect("expiration");
        assert!((1400..=1500).contains(&expiration), "{expiration}");
        let read = deadline_of(&properties).expect("header");
        let error = if read > deadline {
            read - deadline
        } else {
            deadline - read
        };
        assert!(error < Duration::from_millis(5), "{error:?}");
        assert_eq!(deadline_of(&BasicProperties::default()), None, "no header, no deadline");
    }

    #[test]
    fn a_past_deadline_reads_as_past() {
        let properties = BasicProperties::default().with_headers(headers_due_at(1_000));
        assert!(deadline_of(&properties).is_some_and(|d| d <= Instant::now()));
    }
}
