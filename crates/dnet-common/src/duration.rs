//! Durations on the command line, as humantime reads them: `250ms`, `30s`,
//! `2m`, `1h 30m`.

use std::time::Duration;

/// Parses a duration for clap's `value_parser`.
///
/// # Errors
/// Text that is not a duration, with humantime's reason and examples.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("'{text}' is not a duration ({e}): use e.g. 250ms, 30s, 2m"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn reads_units_and_refuses_the_rest() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert!(parse_duration("30").is_err(), "a unit is required");
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").expect_err("garbage").contains("250ms"));
    }
}
