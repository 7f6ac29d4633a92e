//! Building the model with its weights: from a safetensors file with the
//! original state_dict names (checked), or deterministically from a seed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::model::MultiExitInception;
use crate::settings::Precision;

/// Where the weights come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightSource {
    /// A `.safetensors` file with the original state_dict names.
    File(PathBuf),
    /// tch's initialisation under `manual_seed(seed)`, on the CPU: the same
    /// seed gives the same weights on every machine with libtorch 2.11.0.
    Random(u64),
}

/// Held while libtorch's generator is seeded and drawn from.
static SEEDED_DRAW: Mutex<()> = Mutex::new(());

/// What `draw` makes from libtorch's generator seeded with `seed`. The
/// generator is global to the process: every seeded draw holds one lock, so
/// that draws made at once on several threads (a model loading while a test
/// makes its images) each get their own seed's values.
pub fn seeded<T>(seed: u64, draw: impl FnOnce() -> T) -> T {
    let _held = SEEDED_DRAW.lock().unwrap_or_else(PoisonError::into_inner);
    // The seed is an i64 in libtorch; reinterpreting the bits keeps every u64 usable.
    tch::manual_seed(seed as i64);
    draw()
}

/// Why the weights could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read weights from {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("weights file {path} does not fit the model: {problems}")]
    Mismatch { path: PathBuf, problems: String },
    #[error("device cuda:{index} is not available: this machine has {available} CUDA device(s) usable by libtorch")]
    NoDevice { index: usize, available: i64 },
    #[error("cannot copy weights into the model: {0}")]
    Copy(#[from] tch::TchError),
}

/// The model on `device`, with the variable store that owns its weights.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: MultiExitInception,
    pub vars: VarStore,
}

/// Builds the model on the CPU, fills its weights, moves it to `device`,
/// then folds its batch norms and converts it to `precision`.
///
/// # Errors
/// A CUDA device that is not there, an unreadable file, or one with missing
/// tensors or wrong shapes (all named).
pub fn load(source: &WeightSource, device: Device, precision: Precision) -> Result<LoadedModel, WeightsError> {
    if let Device::Cuda(index) = device {
        let available = tch::Cuda::device_count();
        if i64::try_from(index).map_or(true, |i| i >= available) {
            return Err(WeightsError::NoDevice { index, available });
        }
    }
    let mut vars = VarStore::new(Device::Cpu);
    // Building the model draws its initial weights from libtorch's generator,
    // also when a file then replaces them all: always under the lock, so that
    // it cannot disturb another thread's seeded draw.
    let seed = match source {
        WeightSource::Random(seed) => *seed,
        WeightSource::File(_) => 0,
    };
    let mut model = seeded(seed, || MultiExitInception::new(&vars.root()));
    if let WeightSource::File(path) = source {
        copy_from_file(&vars, path)?;
    }
    vars.set_device(device);
    // Folded in F32 from the loaded statistics, then stored in `precision`.
    model.fold_batch_norm(precision.kind(), true);
    if precision != Precision::F32 {
        vars.set_kind(precision.kind());
    }
    Ok(LoadedModel { model, vars })
}

/// Writes the weights of random seed `seed` to `path` (safetensors, the
/// original state_dict names), as `--weights` reads them: what a unit with
/// `--random-weights SEED` computes with, for images and tests that mount a
/// weights file.
///
/// # Errors
/// The file cannot be written.
pub fn write_random(seed: u64, path: &Path) -> Result<(), WeightsError> {
    let vars = VarStore::new(Device::Cpu);
    seeded(seed, || MultiExitInception::new(&vars.root()));
    let mut named: Vec<(String, Tensor)> = vars.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, path).map_err(|e| WeightsError::Read {
        path: path.to_owned(),
        message: format!("cannot write: {e}"),
    })
}

/// Copies every variable from `path`, after checking that each exists with
/// the right shape. Extra tensors (AuxLogits, num_batches_tracked) are ignored.
fn copy_from_file(vars: &VarStore, path: &Path) -> Result<(), WeightsError> {
    let read_error = |message: String| WeightsError::Read {
        path: path.to_owned(),
        message,
    };
    let file: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| read_error(e.to_string()))?
        .into_iter()
        .collect();
    let variables = vars.variables();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    let mut problems = Vec::new();
    for name in &names {
        let expected = variables[*name].size();
        match file.get(*name) {
            None => problems.push(format!("missing {name} {expected:?}")),
            Some(tensor) if tensor.size() != expected => {
                problems.push(format!("{name} has shape {:?}, expected {expected:?}", tensor.size()));
            }
            Some(tensor) if !tensor.is_floating_point() => {
                problems.push(format!("{name} has dtype {:?}, expected a float dtype", tensor.kind()));
            }
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        let count = problems.len();
        problems.truncate(20);
        let more = if count > 20 {
            format!(" (and {} more)", count - 20)
        } else {
            String::new()
        };
        return Err(WeightsError::Mismatch {
            path: path.to_owned(),
            problems: format!("{count} problem(s): {}{more}", problems.join("; ")),
        });
    }
    tch::no_grad(|| -> Result<(), tch::TchError> {
        for name in names {
            let mut variable = variables[name].shallow_clone();
            variable.f_copy_(&file[name])?;
        }
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;

    #[test]
    fn written_random_weights_load_to_the_same_model() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("seed-5.safetensors");
        write_random(5, &path).expect("written");
        let random = load(&WeightSource::Random(5), Device::Cpu, Precision::F32).expect("random");
        let file = load(&WeightSource::File(path), Device::Cpu, Precision::F32).expect("from the file");
        let x = Tensor::ones([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        let _no_grad = tch::no_grad_guard();
        let (a, b) = (
            random.model.forward(&x, 0, 16).expect("forward").probs,
            file.model.forward(&x, 0, 16).expect("forward").probs,
        );
        assert!(a.allclose(&b, 0.0, 0.0, false));
    }
}
