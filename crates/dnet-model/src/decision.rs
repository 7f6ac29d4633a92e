//! The exit rule: answer when confident enough, otherwise hand on
//! (docs/architecture.md, "The exit rule").
//!
//! Confidence of a sample is its largest class probability; a sample is
//! confident at an exit when that reaches the exit's threshold. What a unit
//! does with a request of N samples follows its [`ExitRule`]: per sample
//! (the confident ones answer here, the rest go on) or for the whole request
//! (it exits only if every sample is confident).

use tch::{Kind, Tensor};

pub use crate::options::ExitRule;

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
#[must_use]
pub fn decide(probs: &Tensor, threshold: Option<f64>) -> Decision {
    let (confidence, category) = probs.max_dim(1, false);
    let confidence = confidence.to_kind(Kind::Float);
    let values = Vec::<f32>::try_from(&confidence).unwrap_or_default();
    let confident = values
        .iter()
        .map(|&c| threshold.is_none_or(|t| f64::from(c) >= t))
        .collect();
    Decision {
        category,
        confidence,
        confident,
        min_confidence: values.iter().copied().fold(f32::INFINITY, f32::min),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sample_is_confident_on_its_own() {
        let probs = Tensor::from_slice(&[0.9_f32, 0.1, 0.4, 0.6, 0.5, 0.5]).reshape([3, 2]);
        let decision = decide(&probs, Some(0.6));
        assert_eq!(decision.confident, vec![true, true, false]);
        assert!(!decision.all_confident() && !decision.none_confident());
        assert_eq!(decision.min_confidence, 0.5);
        assert_eq!(Vec::<i64>::try_from(&decision.category).expect("i64"), vec![0, 1, 0]);
        assert!(decide(&probs, None).all_confident());
        assert!(decide(&probs, Some(0.95)).none_confident());
    }
}
