//! Every exit's answer and confidence for every input: what calibration and
//! planning work from. One pass through the trunk per batch computes all
//! sixteen exits (`MultiExitInception::exit_probs`).

use std::time::Instant;

use dnet_model::model::{MultiExitInception, TRUNK_LAYERS};
use tch::{Device, Tensor};

use crate::inputs::Inputs;

/// Exits 1..=16.
pub const EXITS: usize = TRUNK_LAYERS;

/// Answers and confidences of `inputs` at each exit.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ExitTable {
    /// Per input, the largest probability at exits 1..=16.
    pub confidence: Vec<[f32; EXITS]>,
    /// Per input, the class at exits 1..=16.
    pub answer: Vec<[u8; EXITS]>,
    /// Per input, its label, when the inputs have them.
    pub label: Option<Vec<u8>>,
}

impl ExitTable {
    /// Runs `count` inputs through `model` in batches of `batch`.
    ///
    /// # Errors
    /// The forward pass fails.
    pub fn compute(
        model: &MultiExitInception,
        inputs: &Inputs,
        count: u64,
        batch: usize,
        device: Device,
    ) -> anyhow::Result<ExitTable> {
        let started = Instant::now();
        let mut table = ExitTable {
            label: inputs.labelled().then(Vec::new),
            ..ExitTable::default()
        };
        let mut next = 0;
        while next < count {
            let end = count.min(next + batch.max(1) as u64);
            let samples: Vec<_> = (next..end).map(|i| inputs.get(i)).collect();
            let images: Vec<&Tensor> = samples.iter().map(|s| &s.image).collect();
            let x = Tensor::f_cat(&images, 0)?.to_device(device);
            let per_exit = model.exit_probs(&x)?;
            let mut confidence = vec![[0.0; EXITS]; samples.len()];
            let mut answer = vec![[0; EXITS]; samples.len()];
            for (e, probs) in per_exit.iter().enumerate() {
                let (best, class) = probs.to_device(Device::Cpu).max_dim(1, false);
                let best = Vec::<f32>::try_from(&best)?;
                let class = Vec::<i64>::try_from(&class)?;
                for i in 0..samples.len() {
                    confidence[i][e] = best[i];
                    answer[i][e] = u8::try_from(class[i])?;
                }
            }
            table.confidence.extend(confidence);
            table.answer.extend(answer);
            if let Some(labels) = &mut table.label {
                labels.extend(samples.iter().flat_map(|s| s.labels.iter().flatten().copied()));
            }
            next = end;
        }
        eprintln!(
            "computed all 16 exits of {count} inputs in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(table)
    }

    /// Inputs in the table.
    #[must_use]
    pub fn len(&self) -> usize {
        self.confidence.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.confidence.is_empty()
    }
}
