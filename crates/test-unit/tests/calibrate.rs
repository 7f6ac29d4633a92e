//! `test-unit calibrate` on synthetic CIFAR-10 files, with and without
//! labels, checked against every exit's answers computed apart (`computation-unit
//! infer`, one layer at a time): the chosen thresholds reach the target on
//! that data, the report says where inputs exit, and lowering any threshold
//! far enough to exit one more input there would miss the target.

use std::path::Path;
use std::process::Command;

use dnet_model::codec;
use dnet_model::settings::parse_thresholds_file;
use dnet_testkit::programs::infer;
use serde_json::Value;
use tch::Tensor;
use test_unit::inputs::{splitmix64, Inputs, PIXELS};

const SEED: u64 = 2;
const INPUTS: usize = 100;
const EXITS: usize = 16;

/// Every exit's confidence and category per input.
struct Reference {
    confidence: Vec<[f64; EXITS]>,
    category: Vec<[i64; EXITS]>,
}

impl Reference {
    /// Runs `computation-unit infer` layer by layer: start e-1 to exit e, on the `x` the last one handed on.
    fn compute(dir: &Path, images: &Tensor) -> Reference {
        let mut reference = Reference {
            confidence: vec![[0.0; EXITS]; INPUTS],
            category: vec![[0; EXITS]; INPUTS],
        };
        let mut x = images.shallow_clone();
        for exit in 1..=EXITS {
            let (input, output) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
            std::fs::write(&input, codec::encode_x(&x).expect("encode")).expect("write");
            infer(&input, &output, SEED, exit - 1, exit).expect("infer runs");
            let tensors: std::collections::HashMap<String, Tensor> =
                Tensor::read_safetensors(&output).expect("read").into_iter().collect();
            let confidence = Vec::<f32>::try_from(&tensors["confidence"]).expect("f32");
            let category = Vec::<i64>::try_from(&tensors["category"]).expect("i64");
            for i in 0..INPUTS {
                reference.confidence[i][exit - 1] = f64::from(confidence[i]);
                reference.category[i][exit - 1] = category[i];
            }
            if exit < EXITS {
                x = tensors["x"].shallow_clone();
            }
        }
        reference
    }

    /// Where input `i` exits: the first exit whose threshold it reaches, else 16.
    fn exit_of(&self, i: usize, thresholds: &[f64]) -> usize {
        (1..EXITS)
            .find(|&e| self.confidence[i][e - 1] >= thresholds[e - 1])
            .unwrap_or(EXITS)
    }

    /// Share of inputs answered as `truth` says.
    fn matching(&self, thresholds: &[f64], truth: &[i64]) -> f64 {
        let matched = (0..INPUTS)
            .filter(|&i| self.category[i][self.exit_of(i, thresholds) - 1] == truth[i])
            .count();
        matched as f64 / INPUTS as f64
    }

    fn final_answers(&self) -> Vec<i64> {
        self.category.iter().map(|c| c[EXITS - 1]).collect()
    }
}

/// `INPUTS` images of random pixels.
fn pixels() -> Vec<u8> {
    let mut state = 77;
    (0..INPUTS * PIXELS)
        .map(|_| (splitmix64(&mut state) >> 56) as u8)
        .collect()
}

/// A CIFAR-10 file: with labels, a label byte before each image.
fn write_dataset(path: &Path, pixels: &[u8], labels: Option<&[i64]>) {
    let bytes: Vec<u8> = match labels {
        None => pixels.to_vec(),
        Some(labels) => pixels
            .chunks(PIXELS)
            .zip(labels)
            .flat_map(|(image, &label)| {
                std::iter::once(u8::try_from(label).expect("class")).chain(image.iter().copied())
            })
            .collect(),
    };
    std::fs::write(path, bytes).expect("write dataset");
}

/// Runs `test-unit calibrate`; its JSON report, or its stderr on failure.
fn calibrate(dir: &Path, args: &[&str]) -> Result<Value, String> {
    let json = dir.join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_test-unit"))
        .args(["calibrate", "--random-weights", &SEED.to_string(), "--batch-size", "32"])
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--write-thresholds")
        .arg(dir.join("thresholds"))
        .output()
        .expect("run test-unit");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(serde_json::from_str(&std::fs::read_to_string(json).expect("report")).expect("json"))
}

fn thresholds(report: &Value) -> Vec<f64> {
    report["thresholds"]
        .as_array()
        .expect("thresholds")
        .iter()
        .map(|t| t.as_f64().expect("number"))
        .collect()
}

/// The report's thresholds meet `target` against `truth`, its exit shares
/// are where the inputs exit, its thresholds file says the same, and no
/// threshold can go lower (exiting one more input) without missing the target.
fn check(dir: &Path, report: &Value, reference: &Reference, truth: &[i64], target: f64) {
    let chosen = thresholds(report);
    assert_eq!(chosen.len(), 15);
    let reached = reference.matching(&chosen, truth);
    assert!(
        reached >= target,
        "recomputed: {reached} < target {target} with {chosen:?}"
    );

    let file = std::fs::read_to_string(dir.join("thresholds")).expect("thresholds file");
    assert_eq!(parse_thresholds_file(&file).expect("valid").0.to_vec(), chosen);
    for exit in 1..=EXITS {
        let here = (0..INPUTS).filter(|&i| reference.exit_of(i, &chosen) == exit).count();
        let share = report["exit_share"][exit.to_string()].as_f64().expect("share");
        assert_eq!(share, here as f64 / INPUTS as f64, "exit {exit}");
    }

    let mut lowered_somewhere = false;
    for exit in 1..EXITS {
        // The most confident input that reaches this exit and goes past it.
        let next = (0..INPUTS)
            .filter(|&i| reference.exit_of(i, &chosen) > exit)
            .map(|i| reference.confidence[i][exit - 1])
            .max_by(f64::total_cmp);
        let Some(next) = next else { continue };
        let mut lower = chosen.clone();
        lower[exit - 1] = next;
        lowered_somewhere = true;
        let missed = reference.matching(&lower, truth);
        assert!(
            missed < target,
            "exit {exit}: threshold {next} would still reach {missed} >= {target}"
        );
    }
    assert!(lowered_somewhere, "some input goes past an exit: the check above ran");
}

#[test]
fn calibrate_meets_the_target_exactly_as_low_as_it_can_with_and_without_labels() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pixels = pixels();
    let unlabelled = dir.path().join("images.bin");
    write_dataset(&unlabelled, &pixels, None);
    let images: Vec<Tensor> = {
        let inputs = Inputs::open(&unlabelled, false).expect("dataset");
        (0..INPUTS as u64).map(|i| inputs.get(i).image).collect()
    };
    let reference = Reference::compute(dir.path(), &Tensor::cat(&images, 0));
    let finals = reference.final_answers();

    let path = unlabelled.to_str().expect("utf-8");
    let report = calibrate(
        dir.path(),
        &["--dataset", path, "--no-labels", "--target-agreement", "0.95"],
    )
    .expect("calibrates");
    check(dir.path(), &report, &reference, &finals, 0.95);
    assert!(report["accuracy"].is_null(), "no labels, no accuracy");

    // Labels: exit 16's answer for 4 inputs in 5, exit 1's for the fifth,
    // so that some early answers are right where exit 16's are wrong.
    let labels: Vec<i64> = (0..INPUTS)
        .map(|i| reference.category[i][if i % 5 == 0 { 0 } else { EXITS - 1 }])
        .collect();
    let labelled = dir.path().join("labelled.bin");
    write_dataset(&labelled, &pixels, Some(&labels));
    let final_accuracy = reference.matching(&[1.0; 15], &labels);
    let target = (final_accuracy - 0.05).max(0.05);
    let path = labelled.to_str().expect("utf-8");
    let report = calibrate(
        dir.path(),
        &["--dataset", path, "--target-accuracy", &target.to_string()],
    )
    .expect("calibrates");
    check(dir.path(), &report, &reference, &labels, target);
    let accuracy = report["accuracy"].as_f64().expect("accuracy with labels");
    assert_eq!(accuracy, reference.matching(&thresholds(&report), &labels));

    let error = calibrate(
        dir.path(),
        &[
            "--dataset",
            path,
            "--target-accuracy",
            &(final_accuracy + 0.01).min(1.0).to_string(),
        ],
    )
    .expect_err("exit 16 alone is less accurate than that");
    assert!(error.contains("lower the target"), "{error}");
}
