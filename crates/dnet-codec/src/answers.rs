//! Answers of a request whose samples exit at different units
//! (docs/architecture.md, "Per-sample exits"): a unit that answers some
//! samples and hands the others on sends `answered` (every sample's row,
//! exit layer 0 where handed on); the unit that forwarded merges the next
//! unit's `result` into those rows, in order. No libtorch: the transmission
//! unit merges.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// Classes of CIFAR-10: the width of `probs`.
const CLASSES: usize = 10;

/// The rows of a `result` (or of an `answered`), decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Answers {
    pub category: Vec<i64>,
    /// Row-major [N, 10].
    pub probs: Vec<f32>,
    /// Exit layer per sample; 0: not answered yet.
    pub exit_layer: Vec<i64>,
}

impl Answers {
    /// Reads a `result` or `answered` buffer; a `result` without
    /// `exit_layer` (from units before per-sample exits) answered every
    /// sample at `default_exit`.
    ///
    /// # Errors
    /// Not safetensors, or tensors missing or of the wrong dtype or shape.
    pub fn parse(bytes: &[u8], default_exit: u64) -> Result<Answers, String> {
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors result: {e}"))?;
        let category = read_i64(&tensors, "category")?.ok_or("result has no 'category'")?;
        let n = category.len();
        let probs = read_f32(&tensors, "probs", &[n, CLASSES])?;
        let exit_layer = match read_i64(&tensors, "exit_layer")? {
            Some(exits) if exits.len() == n => exits,
            Some(exits) => return Err(format!("'exit_layer' has {} rows, 'category' {n}", exits.len())),
            None => vec![i64::try_from(default_exit).unwrap_or(0); n],
        };
        Ok(Answers {
            category,
            probs,
            exit_layer,
        })
    }

    /// Samples still waiting for an answer (exit layer 0).
    #[must_use]
    pub fn pending(&self) -> usize {
        self.exit_layer.iter().filter(|&&e| e == 0).count()
    }

    /// Fills the pending rows, in order, with the rows of `rest`.
    ///
    /// # Errors
    /// `rest` has not exactly one row per pending sample.
    pub fn merge(mut self, rest: &Answers) -> Result<Answers, String> {
        let pending = self.pending();
        if rest.category.len() != pending {
            return Err(format!(
                "the next unit answered {} samples, {pending} were handed on",
                rest.category.len()
            ));
        }
        let slots = (0..self.exit_layer.len()).filter(|&i| self.exit_layer[i] == 0);
        for (row, slot) in slots.collect::<Vec<_>>().into_iter().enumerate() {
            self.category[slot] = rest.category[row];
            self.exit_layer[slot] = rest.exit_layer[row];
            self.probs[slot * CLASSES..(slot + 1) * CLASSES]
                .copy_from_slice(&rest.probs[row * CLASSES..(row + 1) * CLASSES]);
        }
        Ok(self)
    }

    /// The deepest exit that answered a sample.
    #[must_use]
    pub fn deepest_exit(&self) -> u64 {
        self.exit_layer
            .iter()
            .copied()
            .max()
            .map_or(0, |e| u64::try_from(e).unwrap_or(0))
    }

    /// The smallest per-sample confidence (largest probability of a row).
    #[must_use]
    pub fn min_confidence(&self) -> f32 {
        self.probs.chunks(CLASSES).map(largest).fold(f32::INFINITY, f32::min)
    }

    /// The confidence of row `row` (its largest probability); `None` past the last row.
    #[must_use]
    pub fn confidence(&self, row: usize) -> Option<f32> {
        self.probs.chunks(CLASSES).nth(row).map(largest)
    }

    /// The safetensors buffer: `category`, `probs`, `exit_layer`.
    ///
    /// # Errors
    /// safetensors refuses the tensors (it does not for consistent rows).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let n = self.category.len();
        let category: Vec<u8> = self.category.iter().flat_map(|v| v.to_le_bytes()).collect();
        let probs: Vec<u8> = self.probs.iter().flat_map(|v| v.to_le_bytes()).collect();
        let exits: Vec<u8> = self.exit_layer.iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = [
            ("category", TensorView::new(Dtype::I64, vec![n], &category)),
            ("probs", TensorView::new(Dtype::F32, vec![n, CLASSES], &probs)),
            ("exit_layer", TensorView::new(Dtype::I64, vec![n], &exits)),
        ]
        .into_iter()
        .map(|(name, view)| view.map(|v| (name, v)))
        .collect::<Result<HashMap<_, _>, _>>()
        .map_err(|e| e.to_string())?;
        safetensors::serialize(views, None).map_err(|e| e.to_string())
    }
}

/// The largest of `probs`.
fn largest(probs: &[f32]) -> f32 {
    probs.iter().copied().fold(f32::MIN, f32::max)
}

fn read_i64(tensors: &SafeTensors<'_>, name: &str) -> Result<Option<Vec<i64>>, String> {
    let Ok(view) = tensors.tensor(name) else {
        return Ok(None);
    };
    if view.dtype() != Dtype::I64 || view.shape().len() != 1 {
        return Err(format!(
            "'{name}' must be I64 [N], is {:?} {:?}",
            view.dtype(),
            view.shape()
        ));
    }
    let values = view.data().chunks_exact(8);
    Ok(Some(
        values
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect(),
    ))
}

fn read_f32(tensors: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
    let view = tensors.tensor(name).map_err(|_| format!("result has no '{name}'"))?;
    if view.dtype() != Dtype::F32 || view.shape() != shape {
        return Err(format!(
            "'{name}' must be F32 {shape:?}, is {:?} {:?}",
            view.dtype(),
            view.shape()
        ));
    }
    let values = view.data().chunks_exact(4);
    Ok(values
        .map(|b| f32::from_le_bytes(b.try_into().unwrap_or_default()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(exits: &[i64], first_category: i64) -> Answers {
        let n = exits.len();
        Answers {
            category: (0..n as i64).map(|i| first_category + i).collect(),
            probs: (0..n * CLASSES).map(|i| i as f32 / 100.0).collect(),
            exit_layer: exits.to_vec(),
        }
    }

    #[test]
    fn merges_the_next_answer_into_the_pending_rows_in_order() {
        let answered = rows(&[8, 0, 8, 0], 0);
        let rest = rows(&[12, 16], 7);
        let merged = answered.clone().merge(&rest).expect("merges");
        assert_eq!(merged.exit_layer, vec![8, 12, 8, 16]);
        assert_eq!(merged.category, vec![0, 7, 2, 8]);
        assert_eq!(merged.probs[10..20], rest.probs[..10]);
        assert_eq!(merged.probs[30..40], rest.probs[10..20]);
        assert_eq!(merged.probs[20..30], answered.probs[20..30]);
        assert_eq!(merged.deepest_exit(), 16);
        assert!(answered.merge(&rows(&[12], 0)).is_err(), "one row for two pending");
    }

    #[test]
    fn round_trips_and_reads_results_without_exit_layers() {
        let answers = rows(&[8, 0], 3);
        let bytes = answers.encode().expect("encodes");
        assert_eq!(Answers::parse(&bytes, 0).expect("parses"), answers);

        let category: Vec<u8> = [5_i64].iter().flat_map(|v| v.to_le_bytes()).collect();
        let probs = vec![0_u8; 40];
        let old = safetensors::serialize(
            [
                (
                    "category",
                    TensorView::new(Dtype::I64, vec![1], &category).expect("view"),
                ),
                ("probs", TensorView::new(Dtype::F32, vec![1, 10], &probs).expect("view")),
            ],
            None,
        )
        .expect("serializes");
        assert_eq!(Answers::parse(&old, 16).expect("parses").exit_layer, vec![16]);
        assert!(Answers::parse(b"not safetensors", 16).is_err());
    }
}
