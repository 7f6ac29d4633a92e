//! `computation-unit infer`: the model on a safetensors file, offline.

use std::path::Path;

use tch::Tensor;

use dnet_model::codec;
use dnet_model::decision::decide;
use dnet_model::weights::{load, WeightSource};

use crate::config::InferArgs;

/// What `infer` produced, for its one-line summary.
#[derive(Debug)]
pub struct InferSummary {
    pub samples: i64,
    pub categories: Vec<i64>,
    pub confidences: Vec<f32>,
}

/// Runs the model from `--start-layer` to `--exit-layer` on `--input` and
/// writes `probs`, `logits`, `category`, `confidence`, and `x` (E<16).
///
/// # Errors
/// Unreadable or invalid input, bad weights, an invalid split, or an unwritable output.
pub fn run(args: &InferArgs) -> anyhow::Result<InferSummary> {
    tch::set_num_threads(args.model.threads());
    let exit = usize::from(args.exit_layer);
    let bytes = std::fs::read(&args.input).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.input.display()))?;
    let x = codec::decode_x(&bytes, args.start_layer, usize::MAX)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.input.display()))?;
    let source = args.model.weight_source().unwrap_or(WeightSource::Random(0)); // clap requires one
    let loaded = load(&source, args.model.device, args.model.precision)?;
    let output = loaded
        .model
        .forward(&x.to_device(args.model.device), args.start_layer, exit)?;
    let decision = decide(&output.probs, None).map_err(anyhow::Error::msg)?;
    let mut tensors: Vec<(&str, &Tensor)> = vec![
        ("probs", &output.probs),
        ("logits", &output.logits),
        ("category", &decision.category),
        ("confidence", &decision.confidence),
    ];
    if let Some(trunk) = &output.trunk {
        tensors.push(("x", trunk));
    }
    write(&args.output, &codec::encode(&tensors)?)?;
    Ok(InferSummary {
        samples: x.size()[0],
        categories: Vec::<i64>::try_from(&decision.category)?,
        confidences: Vec::<f32>::try_from(&decision.confidence.to_device(tch::Device::Cpu))?,
    })
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}
