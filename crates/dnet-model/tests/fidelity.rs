//! The tch model against an independent PyTorch implementation of docs/model-spec.md.

use std::collections::HashMap;

use dnet_model::model::MultiExitInception;
use dnet_model::settings::Precision;
use dnet_model::weights::{load, WeightSource, WeightsError};
use dnet_testkit::venv_python;
use tch::{Device, Tensor};

/// libtorch threads on both sides of a comparison.
const THREADS: i32 = 2;

/// Runs the PyTorch reference into `dir`: weights.safetensors, weights.pkl, cases.safetensors.
fn write_reference(dir: &std::path::Path, seed: u64) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/reference.py");
    let status = std::process::Command::new(venv_python())
        .arg(&script)
        .arg(dir)
        .arg(seed.to_string())
        .arg(THREADS.to_string())
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (make setup installs the venv): {e}",
                venv_python().display()
            )
        });
    assert!(status.success(), "reference.py failed");
}

/// Largest relative difference from the reference (max |got - want| / max |want|)
/// of trunk outputs and exit scores. BatchNorm folding and channels-last
/// convolutions change the order of floating-point sums, not the function.
const TOLERANCE: f64 = 1e-5;
/// The same for probabilities. The reference's random weights give exit
/// scores up to ~120, where the softmax turns a last-bit difference of the
/// scores (well within TOLERANCE) into up to ~2e-5 of probability; the scores
/// are the fair measure, the probabilities are checked against this bound.
const PROBS_TOLERANCE: f64 = 1e-4;

/// max |got - want| / max |want|.
fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size());
    let scale = want.abs().max().double_value(&[]).max(f64::MIN_POSITIVE);
    (got - want).abs().max().double_value(&[]) / scale
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_within(what, got, want, TOLERANCE);
}

fn assert_within(what: &str, got: &Tensor, want: &Tensor, tolerance: f64) {
    let error = relative_error(got, want);
    assert!(error <= tolerance, "{what}: relative error {error:e} > {tolerance:e}");
}

struct Reference {
    _dir: tempfile::TempDir,
    model: MultiExitInception,
    cases: HashMap<String, Tensor>,
    weights: std::path::PathBuf,
    pickle: std::path::PathBuf,
}

fn reference() -> Reference {
    tch::set_num_threads(THREADS);
    let dir = tempfile::tempdir().expect("temp dir");
    write_reference(dir.path(), 7);
    let weights = dir.path().join("weights.safetensors");
    let model = load(&WeightSource::File(weights.clone()), Device::Cpu, Precision::F32)
        .expect("reference weights load")
        .model;
    let cases = Tensor::read_safetensors(dir.path().join("cases.safetensors"))
        .expect("cases")
        .into_iter()
        .collect();
    let pickle = dir.path().join("weights.pkl");
    Reference {
        _dir: dir,
        model,
        cases,
        weights,
        pickle,
    }
}

#[test]
fn every_exit_and_split_matches_pytorch_and_splits_chain() {
    let reference = reference();
    let case = |name: &str| reference.cases.get(name).unwrap_or_else(|| panic!("case {name}"));
    let x = case("x");

    for exit in 1..16 {
        let out = reference.model.forward(x, 0, exit).expect("forward");
        assert_close(
            &format!("scores 0->{exit}"),
            &out.logits,
            case(&format!("logits/0/{exit}")),
        );
        assert_within(
            &format!("probs 0->{exit}"),
            &out.probs,
            case(&format!("probs/0/{exit}")),
            PROBS_TOLERANCE,
        );
        let trunk = out.trunk.expect("trunk output below 16");
        assert_close(&format!("trunk 0->{exit}"), &trunk, case(&format!("trunk/0/{exit}")));
    }
    let full = reference.model.forward(x, 0, 16).expect("forward");
    assert!(full.trunk.is_none());
    let logits = full.logits;
    assert_close("logits 0->16", &logits, case("logits/0/16"));
    assert_within("probs 0->16", &full.probs, case("probs/0/16"), PROBS_TOLERANCE);

    let mid = reference
        .model
        .forward(case("trunk/0/8"), 8, 12)
        .expect("forward 8->12");
    assert_close("scores 8->12", &mid.logits, case("logits/8/12"));
    assert_within("probs 8->12", &mid.probs, case("probs/8/12"), PROBS_TOLERANCE);
    assert_close("trunk 8->12", mid.trunk.as_ref().expect("trunk"), case("trunk/8/12"));
    let tail = reference
        .model
        .forward(case("trunk/0/12"), 12, 16)
        .expect("forward 12->16");
    assert_close("logits 12->16", &tail.logits, case("logits/12/16"));

    // (0->8), (8->12), (12->16) in turn equals (0->16).
    let first = reference.model.forward(x, 0, 8).expect("0->8").trunk.expect("trunk");
    let second = reference
        .model
        .forward(&first, 8, 12)
        .expect("8->12")
        .trunk
        .expect("trunk");
    let chained = reference.model.forward(&second, 12, 16).expect("12->16").logits;
    assert_close("chained 0->8->12->16", &chained, &logits);

    // The converter turns the original torch.save pickle into the same weights.
    let converted = reference.pickle.with_extension("converted.safetensors");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/convert_weights.py");
    let status = std::process::Command::new(venv_python())
        .arg(&script)
        .arg(&reference.pickle)
        .arg(&converted)
        .status()
        .expect("run convert_weights.py");
    assert!(status.success());
    let model = load(&WeightSource::File(converted), Device::Cpu, Precision::F32)
        .expect("converted weights load")
        .model;
    let again = model.forward(x, 0, 16).expect("forward").logits;
    assert_close("converted weights 0->16", &again, &logits);

    // A file with a missing tensor and a wrong shape fails, naming both.
    let mut tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&reference.weights).expect("read");
    tensors.retain(|(name, _)| name != "fc.bias");
    for (name, tensor) in &mut tensors {
        if name == "Mixed_6a.branch3x3.conv.weight" {
            *tensor = Tensor::zeros([384, 288, 3, 2], (tch::Kind::Float, Device::Cpu));
        }
    }
    let broken = reference.weights.with_extension("broken.safetensors");
    Tensor::write_safetensors(&tensors, &broken).expect("write");
    let error = load(&WeightSource::File(broken), Device::Cpu, Precision::F32).expect_err("must not load");
    let message = error.to_string();
    assert!(matches!(error, WeightsError::Mismatch { .. }), "{message}");
    assert!(message.contains("missing fc.bias"), "{message}");
    assert!(
        message.contains("Mixed_6a.branch3x3.conv.weight has shape [384, 288, 3, 2]"),
        "{message}"
    );
}

#[test]
fn random_weights_are_deterministic() {
    let x = Tensor::randn([1, 3, 32, 32], (tch::Kind::Float, Device::Cpu));
    let run = |seed| {
        let model = load(&WeightSource::Random(seed), Device::Cpu, Precision::F32)
            .expect("random weights")
            .model;
        model.forward(&x, 0, 16).expect("forward").logits
    };
    assert!(run(5).equal(&run(5)));
    assert!(!run(5).equal(&run(6)));
}

#[test]
fn bad_splits_and_shapes_are_errors_not_panics() {
    let model = load(&WeightSource::Random(1), Device::Cpu, Precision::F32)
        .expect("random weights")
        .model;
    let image = Tensor::zeros([1, 3, 32, 32], (tch::Kind::Float, Device::Cpu));
    assert!(model.forward(&image, 8, 8).is_err());
    assert!(model.forward(&image, 0, 17).is_err());
    assert!(
        model.forward(&image, 1, 8).is_err(),
        "an image is not the input of layer 1"
    );
}
