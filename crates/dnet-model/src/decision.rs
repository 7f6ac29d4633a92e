//! The exit rule: answer when confident enough, otherwise hand on
//! (docs/architecture.md, "The exit rule").
//!
//! Confidence of a sample is its largest class probability; a sample is
//! confident at an exit when that reaches the exit's threshold. What a unit
//! does with a request of N samples follows its [`ExitRule`]: per sample
//! (the confident ones answer here, the rest go on) or for the whole request
//! (it exits only if every sample is confident).

use tch::{Kind, Tensor};

pub use crate::settings::ExitRule;

/// The exit decision for one request.
#[derive(Debug)]
pub struct Decision {
    /// Argmax class per sample, I64 [N].
    pub category: Tensor,
    /// Largest probability per sample, F32 [N].
    pub confidence: Tensor,
    /// Whether each sample reaches the threshold.
    pub confident: Vec<bool>,
    /// The smallest per-sample confidence.
    pub min_confidence: f32,
}

impl Decision {
    /// Every sample is confident: the whole request answers here.
    #[must_use]
    pub fn all_confident(&self) -> bool {
        self.confident.iter().all(|&c| c)
    }

    /// No sample is confident: the whole request goes on.
    #[must_use]
    pub fn none_confident(&self) -> bool {
        !self.confident.iter().any(|&c| c)
    }
}

/// Decides on `probs` [N, 10]; `threshold = None` (exit 16) answers every sample.
///
/// # Errors
/// `probs` is not [N, C] with N >= 1, or its confidences cannot be read: a
/// request must not pass as confident because nothing could be read.
pub fn decide(probs: &Tensor, threshold: Option<f64>) -> Result<Decision, String> {
    let samples = match probs.size().as_slice() {
        &[n, _] if n >= 1 => usize::try_from(n).unwrap_or(0),
        shape => {
            return Err(format!(
                "cannot decide on probabilities shaped {shape:?}: expected [N, classes]"
            ))
        }
    };
    let (confidence, category) = probs.f_max_dim(1, false).map_err(|e| e.to_string())?;
    let confidence = confidence.f_to_kind(Kind::Float).map_err(|e| e.to_string())?;
    let values = Vec::<f32>::try_from(&confidence).map_err(|e| format!("cannot read the confidences: {e}"))?;
    if values.len() != samples {
        return Err(format!("{} confidences read for {samples} samples", values.len()));
    }
    let confident = values
        .iter()
        .map(|&c| threshold.is_none_or(|t| f64::from(c) >= t))
        .collect();
    Ok(Decision {
        category,
        confidence,
        confident,
        min_confidence: values.iter().copied().fold(f32::INFINITY, f32::min),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sample_is_confident_on_its_own() {
        let probs = Tensor::from_slice(&[0.9_f32, 0.1, 0.4, 0.6, 0.5, 0.5]).reshape([3, 2]);
        let decision = decide(&probs, Some(0.6)).expect("decides");
        assert_eq!(decision.confident, vec![true, true, false]);
        assert!(!decision.all_confident() && !decision.none_confident());
        assert_eq!(decision.min_confidence, 0.5);
        assert_eq!(Vec::<i64>::try_from(&decision.category).expect("i64"), vec![0, 1, 0]);
        assert!(decide(&probs, None).expect("decides").all_confident());
        assert!(decide(&probs, Some(0.95)).expect("decides").none_confident());
    }

    #[test]
    fn what_cannot_be_read_is_an_error_not_confident() {
        // Before: a failed read gave no confidences, and no sample was "not
        // confident", so the request was answered SUCCESS at this exit.
        let rank1 = Tensor::from_slice(&[0.9_f32, 0.1]);
        assert!(decide(&rank1, Some(0.5)).is_err());
        let no_samples = Tensor::zeros([0, 10], (Kind::Float, tch::Device::Cpu));
        assert!(decide(&no_samples, Some(0.5)).is_err());
        let ints = Tensor::from_slice(&[1_i64, 2, 3, 4]).reshape([2, 2]);
        assert!(decide(&ints, Some(0.5)).is_ok(), "integer scores are read as floats");
    }
}
