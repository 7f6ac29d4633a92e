//! A range of thresholds: what a unit accepts in requests
//! (`--allow-threshold-override LO..HI`), and where its edge may move its
//! exit's threshold (`--threshold-range LO..HI`).

/// The thresholds a unit accepts in a request (`--allow-threshold-override LO..HI`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OverrideBounds {
    pub low: f64,
    pub high: f64,
}

impl OverrideBounds {
    #[must_use]
    pub fn contains(&self, threshold: f64) -> bool {
        (self.low..=self.high).contains(&threshold)
    }
}

impl std::fmt::Display for OverrideBounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.low, self.high)
    }
}

/// Parses `LO..HI` (0 <= LO <= HI <= 1); for clap's `value_parser`.
///
/// # Errors
/// Another form, or bounds outside 0..1 or reversed.
pub fn parse_override_bounds(text: &str) -> Result<OverrideBounds, String> {
    let (low, high) = text
        .split_once("..")
        .ok_or_else(|| format!("'{text}' is not a range: give LO..HI, e.g. 0.5..1"))?;
    let number = |v: &str| v.trim().parse::<f64>().map_err(|_| format!("'{v}' is not a number"));
    let bounds = OverrideBounds {
        low: number(low)?,
        high: number(high)?,
    };
    if !(0.0 <= bounds.low && bounds.low <= bounds.high && bounds.high <= 1.0) {
        return Err(format!("'{text}' must satisfy 0 <= LO <= HI <= 1"));
    }
    Ok(bounds)
}
