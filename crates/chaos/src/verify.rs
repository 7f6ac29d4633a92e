//! Every answer checked against the model computed in this process: each
//! call got its own request's answer.
//!
//! Each request carries an input of its own (`load::image(id)`), so its
//! answer's probabilities identify it.

use dnet_model::codec::decode_x;
use dnet_model::model::MultiExitInception;
use dnet_model::settings::Precision;
use dnet_model::weights::{load, WeightSource};
use tch::{Device, Tensor};

use crate::load::{image, Tally};

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

    /// Checks every answer of `tally` against the requests it sent.
    ///
    /// # Errors
    /// An input cannot be decoded or the model fails.
    pub fn check(&self, tally: &Tally) -> anyhow::Result<Check> {
        let expected = self.expected(tally.first_id, tally.sent)?;
        let wrong = tally
            .answers
            .iter()
            .filter(|(id, probs)| {
                let own = id
                    .checked_sub(tally.first_id)
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| expected.get(i));
                !own.is_some_and(|expected| close(probs, expected))
            })
            .count();
        Ok(Check { wrong: wrong as u64 })
    }

    /// The probabilities of requests `first_id`.. (`n` of them) at this exit.
    fn expected(&self, first_id: u64, n: u64) -> anyhow::Result<Vec<Vec<f32>>> {
        let _no_grad = tch::no_grad_guard();
        let mut all = Vec::new();
        let mut first = first_id;
        let end = first_id + n;
        while first < end {
            let last = (first + BATCH).min(end);
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
    fn an_answer_given_to_the_wrong_request_is_wrong() {
        let reference = Reference::new(1, 2).expect("model");
        let expected = reference.expected(10, 3).expect("expected");
        let right = Tally {
            first_id: 10,
            sent: 3,
            answers: (0..3).map(|i| (10 + i, expected[i as usize].clone())).collect(),
            ..Tally::default()
        };
        assert_eq!(reference.check(&right).expect("check"), Check::default());

        // Request 10's answer also came back for request 11.
        let mut swapped = right;
        swapped.answers[1].1 = expected[0].clone();
        assert_eq!(reference.check(&swapped).expect("check"), Check { wrong: 1 });
    }
}
