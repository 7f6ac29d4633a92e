//! The model's settings as plain values, and the text forms every program
//! accepts for them (thresholds, devices, bounds, dtypes): parsed here so
//! that each program reads them alike. No command-line structs: those are
//! `dnet-model-flags`'.

use std::str::FromStr;

use tch::{Device, Kind};

use crate::model::SIDE_EXITS;

/// The dtype the network computes in. Inputs and outputs on the wire stay F32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats: the reference's results.
    #[default]
    F32,
    /// bfloat16: for GPUs, and CPUs with AVX512-BF16 or AMX.
    Bf16,
    /// float16: for GPUs (slow on most CPUs).
    F16,
}

impl Precision {
    /// The names a command line gives.
    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "f16"];

    #[must_use]
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::F16 => Kind::Half,
        }
    }
}

/// The dtype of the tensor a unit hands on to the next (a NOT_SUCCESS `x`).
/// Receivers accept all three and widen to F32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WireDtype {
    /// 32-bit floats, the original's: exactly what the next unit would compute from.
    #[default]
    F32,
    /// float16: half the bytes; 3 decimal digits.
    F16,
    /// bfloat16: half the bytes; F32's range, 2 decimal digits.
    Bf16,
}

impl WireDtype {
    /// The names a command line gives.
    pub const NAMES: [&'static str; 3] = ["f32", "f16", "bf16"];

    #[must_use]
    pub fn kind(self) -> Kind {
        match self {
            WireDtype::F32 => Kind::Float,
            WireDtype::F16 => Kind::Half,
            WireDtype::Bf16 => Kind::BFloat16,
        }
    }
}

/// What a unit does with a request of N samples when only some are confident.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExitRule {
    /// The confident samples answer here; only the others go on to the next
    /// unit; the caller gets every sample's answer and exit layer, in order.
    #[default]
    PerSample,
    /// The request answers here only if every sample is confident, else all
    /// of it goes on (DNet's rule before per-sample exits).
    WholeRequest,
}

impl ExitRule {
    /// The names a command line gives.
    pub const NAMES: [&'static str; 2] = ["per-sample", "whole-request"];
}

/// Reads the name of one of `T`'s values, e.g. `bf16` or `per-sample`.
fn named<T: Copy>(text: &str, names: &[&str], values: &[T], what: &str) -> Result<T, String> {
    names
        .iter()
        .position(|name| *name == text)
        .map(|i| values[i])
        .ok_or_else(|| format!("'{text}' is not a {what}: use one of {}", names.join(", ")))
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        named(text, &Self::NAMES, &[Self::F32, Self::Bf16, Self::F16], "precision")
    }
}

impl FromStr for WireDtype {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        named(text, &Self::NAMES, &[Self::F32, Self::F16, Self::Bf16], "wire dtype")
    }
}

impl FromStr for ExitRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        named(text, &Self::NAMES, &[Self::PerSample, Self::WholeRequest], "exit rule")
    }
}

pub use dnet_codec::bounds::{parse_override_bounds, OverrideBounds};

/// libtorch intra-op threads when `--threads` is not given: the CPUs this
/// process may use (its affinity mask and cgroup CPU quota, which a
/// container's CPU limit sets), not the machine's count.
#[must_use]
pub fn default_threads() -> i32 {
    std::thread::available_parallelism().map_or(1, |n| i32::try_from(n.get()).unwrap_or(i32::MAX))
}

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

/// Reads a thresholds file: `t1,...,t15` as `--thresholds` takes them, on
/// one or more lines; `#` starts a comment.
///
/// # Errors
/// See [`parse_thresholds`].
pub fn parse_thresholds_file(text: &str) -> Result<Thresholds, String> {
    let values: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim().trim_matches(','))
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    parse_thresholds(&values)
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
    fn thresholds_files_take_lines_and_comments() {
        let text =
            "# from test-unit calibrate\n0.5,0.5,0.5,0.5,0.5\n0.5,0.5,0.5,0.5,0.5,\n0.5,0.5,0.5,0.5,0.5 # last\n";
        assert_eq!(parse_thresholds_file(text), Ok(Thresholds([0.5; 15])));
        assert!(parse_thresholds_file("# nothing\n").is_err());
    }

    #[test]
    fn override_bounds_are_a_range_inside_zero_one() {
        let bounds = parse_override_bounds("0.5..1").expect("parses");
        assert!(bounds.contains(0.5) && bounds.contains(1.0) && !bounds.contains(0.49));
        assert!(parse_override_bounds("0.5").is_err());
        assert!(parse_override_bounds("0.9..0.5").is_err());
        assert!(parse_override_bounds("0..1.5").is_err());
    }

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
    fn named_values_parse() {
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("f16".parse::<WireDtype>(), Ok(WireDtype::F16));
        assert_eq!("whole-request".parse::<ExitRule>(), Ok(ExitRule::WholeRequest));
        assert!("f64".parse::<Precision>().is_err());
    }

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        assert_eq!(parse_device("cuda:1"), Ok(Device::Cuda(1)));
        assert!(parse_device("tpu").is_err());
    }
}
