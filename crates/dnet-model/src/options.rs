//! Values that arrive as text on command lines: exit thresholds and devices.
//! Shared by every program that runs the model, so each accepts the same forms.

use tch::Device;

use crate::model::SIDE_EXITS;

/// The 15 exit thresholds (exits 1..15), each in 0..=1.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds(pub [f64; SIDE_EXITS]);

/// Parses `t1,...,t15`; for clap's `value_parser`.
///
/// # Errors
/// A value that is not a number, outside 0..1, or not exactly 15 of them.
pub fn parse_thresholds(text: &str) -> Result<Thresholds, String> {
    let values: Vec<f64> = text
        .split(',')
        .map(|v| v.trim().parse::<f64>().map_err(|_| format!("'{v}' is not a number")))
        .collect::<Result<_, _>>()?;
    let values: [f64; SIDE_EXITS] = values
        .try_into()
        .map_err(|v: Vec<f64>| format!("expected 15 thresholds (exits 1..15), got {}", v.len()))?;
    if let Some(bad) = values.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(format!("threshold {bad} is outside 0..1"));
    }
    Ok(Thresholds(values))
}

/// Parses `cpu`, `cuda` or `cuda:N`; for clap's `value_parser`.
///
/// # Errors
/// Any other text.
pub fn parse_device(text: &str) -> Result<Device, String> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => text
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("'{text}' is not a device: use cpu, cuda or cuda:N")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_need_fifteen_values_in_range() {
        let fifteen = vec!["0.5"; 15].join(",");
        assert_eq!(parse_thresholds(&fifteen), Ok(Thresholds([0.5; 15])));
        assert!(parse_thresholds("0.5,0.6")
            .expect_err("invalid")
            .contains("expected 15"));
        assert!(parse_thresholds(&vec!["1.5"; 15].join(","))
            .expect_err("invalid")
            .contains("outside"));
    }

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        assert_eq!(parse_device("cuda:1"), Ok(Device::Cuda(1)));
        assert!(parse_device("tpu").is_err());
    }
}
