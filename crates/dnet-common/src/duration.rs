//! Durations on the command line: `250ms`, `30s`, `2m`, or a bare number of seconds.

use std::time::Duration;

/// Parses `250ms`, `1.5s`, `2m` or `30` (seconds); for clap's `value_parser`.
///
/// # Errors
/// A message naming the accepted forms when `text` is none of them.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_seconds) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: use e.g. 250ms, 30s, 2m or 30 (seconds)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("'{text}' is not a non-negative duration"));
    }
    Duration::try_from_secs_f64(value * unit_seconds).map_err(|e| format!("'{text}': {e}"))
}

/// Whole microseconds of `duration`, saturating (hop records carry u64 microseconds).
#[must_use]
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn accepts_units_and_bare_seconds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn rejects_garbage_and_negatives() {
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("NaN").is_err());
    }
}
