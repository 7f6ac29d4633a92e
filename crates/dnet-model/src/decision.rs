//! The exit rule: answer when confident enough, otherwise hand on
//! (docs/architecture.md, "The exit rule").
//!
//! Confidence of a sample is its largest class probability. A request with N
//! samples exits only if **every** sample reaches the threshold; its reported
//! confidence is the smallest of the N (the weakest sample decides).

use tch::{Kind, Tensor};

/// The exit decision for one request.
#[derive(Debug)]
pub struct Decision {
    /// Argmax class per sample, I64 [N].
    pub category: Tensor,
    /// Largest probability per sample, F32 [N].
    pub confidence: Tensor,
    /// The request's confidence: the smallest per-sample confidence.
    pub min_confidence: f32,
    /// Whether the request exits here.
    pub exits: bool,
}

/// Decides on `probs` [N, 10]; `threshold = None` (exit 16) always exits.
#[must_use]
pub fn decide(probs: &Tensor, threshold: Option<f64>) -> Decision {
    let (confidence, category) = probs.max_dim(1, false);
    let confidence = confidence.to_kind(Kind::Float);
    let min_confidence = confidence.min().double_value(&[]) as f32;
    let exits = threshold.is_none_or(|t| f64::from(min_confidence) >= t);
    Decision {
        category,
        confidence,
        min_confidence,
        exits,
    }
}
