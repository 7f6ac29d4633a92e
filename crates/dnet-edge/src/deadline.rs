//! The deadline of a call: the caller's `grpc-timeout` header, else a
//! default, never more than `--max-deadline` (docs/architecture.md, "Deadlines").

use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

/// When a call's headers arrived, stamped by admission before the message
/// is read: the call's budget runs from here, as tonic's timer from the
/// same `grpc-timeout` does. A budget that started once the message had
/// been read would end after the caller's deadline whenever the message
/// took longer than the margin to arrive (tonic would then cancel the call
/// first), and each unit would hand the next a later deadline than its own.
#[derive(Clone, Copy, Debug)]
pub struct Arrival(pub Instant);

/// What an answer's way back to the caller takes on a busy host. A call's
/// budget keeps it back from the caller's deadline (at most a tenth of it) so
/// that this unit answers DEADLINE_EXCEEDED itself, with a message, before
/// the caller's transport cancels; a late answer is given at least this long
/// before the budget ends (`service`).
pub const WAY_BACK: Duration = Duration::from_millis(20);

/// How long before the end of a call's budget a late answer is given
/// (`--answer-when-late`): a tenth of the budget, so that it reaches the
/// caller in time, but at least its way back.
#[must_use]
pub fn late_margin(budget: Duration) -> Duration {
    WAY_BACK.max(budget / 10)
}

/// How long a call may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub time: Duration,
    /// The caller asked for more than the unit allows (`--max-deadline`).
    pub clamped: bool,
}

/// How long this call may take: the caller's `grpc-timeout` (less a small
/// margin) when set and valid, else `default`; at most `max`. A caller's
/// deadline is a header it controls: `grpc-timeout: 99999999H` (11,000
/// years) would otherwise become an AMQP expiration that newer brokers
/// refuse by closing the publish channel.
#[must_use]
pub fn budget(metadata: &MetadataMap, default: Duration, max: Duration) -> Budget {
    let asked = metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(default, |timeout| timeout.saturating_sub(WAY_BACK.min(timeout / 10)));
    Budget {
        time: asked.min(max),
        clamped: asked > max,
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H M S m u n).
#[must_use]
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["", "S", "12", "1x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn budget_falls_back_to_default_and_keeps_a_margin() {
        let max = Duration::from_secs(60);
        let mut metadata = MetadataMap::new();
        assert_eq!(
            budget(&metadata, Duration::from_secs(3), max).time,
            Duration::from_secs(3)
        );
        metadata.insert("grpc-timeout", "1000m".parse().expect("valid header"));
        let budget = budget(&metadata, Duration::from_secs(3), max);
        assert_eq!(budget.time, Duration::from_millis(980));
        assert!(!budget.clamped);
    }

    #[test]
    fn a_short_deadline_keeps_back_at_most_a_tenth_and_a_late_answer_still_fits() {
        let max = Duration::from_secs(60);
        let mut metadata = MetadataMap::new();
        for (timeout, expected_budget, expected_margin) in [
            // Short: the keep-back is a tenth of the deadline (not 20 ms,
            // which would eat a fifth of it), the late answer's margin its way back.
            ("100m", 90, 20),
            ("50m", 45, 20),
            // Long: 20 ms kept back, a late answer a tenth of the budget early.
            ("2S", 1980, 198),
        ] {
            metadata.insert("grpc-timeout", timeout.parse().expect("valid header"));
            let budget = budget(&metadata, Duration::from_secs(3), max).time;
            assert_eq!(budget, Duration::from_millis(expected_budget), "{timeout}");
            let margin = late_margin(budget);
            assert_eq!(margin, Duration::from_millis(expected_margin), "{timeout}");
            assert!(
                margin < budget,
                "{timeout}: a late answer is given before the budget ends"
            );
        }
    }

    #[test]
    fn a_deadline_longer_than_the_maximum_is_clamped() {
        let max = Duration::from_secs(300);
        let mut metadata = MetadataMap::new();
        // 50 days: more than an AMQP expiration may hold (2^32 - 1 ms).
        metadata.insert("grpc-timeout", "1200H".parse().expect("valid header"));
        assert_eq!(
            budget(&metadata, Duration::from_secs(3), max),
            Budget {
                time: max,
                clamped: true
            }
        );
    }
}
