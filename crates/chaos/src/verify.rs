//! Every answer checked against the model computed in this process: each
//! call got its own request's answer, and no request was answered twice.
//!
//! Each request carries an input of its own (`load::image(id)`), so its
//! answer's probabilities identify it. An answer that is not its request's
//! is traced to the request it belongs to, which then counts one answer more.

use dnet_model::codec::decode_x;
use dnet_model::model::MultiExitInception;
use dnet_model::options::Precision;
use dnet_model::weights::{load, WeightSource};
use tch::{Device, Tensor};

use crate::load::image;

/// Largest difference between an answer's probability and the one computed
/// here that still counts as equal (batch size and threads change the last bits).
const TOLERANCE: f32 = 1e-5;
/// Inputs computed together when checking.
const BATCH: u64 = 64;

/// What the check found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// Answers that were not the answer of the request they came back for.
    pub wrong: u64,
    /// Answers beyond the first that belong to one request.
    pub duplicates: u64,
}

/// The model the workers run (same seed), computed here.
pub struct Reference {
    model: MultiExitInception,
    exit: usize,
}

impl Reference {
    /// The model of random weights `seed`, answering at `exit`.
    ///
    /// # Errors
    /// The weights cannot be built.
    pub fn new(seed: u64, exit: usize) -> anyhow::Result<Reference> {
        let model = load(&WeightSource::Random(seed), Device::Cpu, Precision::F32)?.model;
        Ok(Reference { model, exit })
    }

    /// Checks `answers` ((request id, probs)) of requests 0..`sent`.
    ///
    /// # Errors
    /// An input cannot be decoded or the model fails.
    pub fn check(&self, sent: u64, answers: &[(u64, Vec<f32>)]) -> anyhow::Result<Check> {
        let expected = self.expected(sent)?;
        let mut answers_per_request = vec![0_u64; expected.len()];
        let mut check = Check::default();
        for (id, probs) in answers {
            let own = usize::try_from(*id).ok().filter(|&i| i < expected.len());
            match own {
                Some(i) if close(probs, &expected[i]) => answers_per_request[i] += 1,
                _ => {
                    check.wrong += 1;
                    if let Some(owner) = expected.iter().position(|e| close(probs, e)) {
                        answers_per_request[owner] += 1;
                    }
                }
            }
        }
        check.duplicates = answers_per_request.iter().map(|n| n.saturating_sub(1)).sum();
        Ok(check)
    }

    /// The probabilities of requests 0..n at this exit.
    fn expected(&self, n: u64) -> anyhow::Result<Vec<Vec<f32>>> {
        let _no_grad = tch::no_grad_guard();
        let mut all = Vec::new();
        let mut first = 0;
        while first < n {
            let last = (first + BATCH).min(n);
            let images = (first..last)
                .map(|id| decode_x(&image(id), 0, 1).map_err(anyhow::Error::from))
                .collect::<anyhow::Result<Vec<Tensor>>>()?;
            let probs = self.model.forward(&Tensor::cat(&images, 0), 0, self.exit)?.probs;
            let flat = Vec::<f32>::try_from(probs.flatten(0, -1))?;
            all.extend(flat.chunks_exact(10).map(<[f32]>::to_vec));
            first = last;
        }
        Ok(all)
    }
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= TOLERANCE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_given_to_the_wrong_request_is_wrong_and_a_duplicate() {
        let reference = Reference::new(1, 2).expect("model");
        let expected = reference.expected(3).expect("expected");
        let right: Vec<(u64, Vec<f32>)> = (0..3).map(|id| (id, expected[id as usize].clone())).collect();
        assert_eq!(reference.check(3, &right).expect("check"), Check::default());

        // Request 0's answer also came back for request 1.
        let mut swapped = right;
        swapped[1].1 = expected[0].clone();
        assert_eq!(
            reference.check(3, &swapped).expect("check"),
            Check {
                wrong: 1,
                duplicates: 1
            }
        );
    }
}
