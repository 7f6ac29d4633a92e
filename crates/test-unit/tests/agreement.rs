//! Agreement watched live (`--shadow-rate`, `--target-agreement`): a cascade
//! of direct units 8 -> 16 on the heads-only demo model
//! (`scripts/trained_model.sh --heads-only`: a random trunk whose exit heads
//! are trained on scikit-learn's digits, so that confidences mean something;
//! trained here first if missing). Unit 8 starts with a threshold far too low
//! for the target; shadow traffic measures its agreement with exit 16 and the
//! controller raises the threshold until fresh requests (the test set, which
//! the controller never saw) agree with exit 16 at least as often as the
//! target. With the controller off the threshold stays low and this fails.
//!
//! Budget: [`LEARNING_REQUESTS`] one-image requests on the validation set for
//! the controller to settle, then the test set once, one request at a time;
//! each request computes exit 8 and, for most, exit 16 (tens of ms here).
//! The shadow calls' 2 s budget is the unit's own, not a measure of speed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dnet_model::settings::Precision;
use dnet_model::weights::{load, WeightSource};
use dnet_testkit::{wait_for, TransmissionUnit};
use serde_json::Value;
use tch::{Device, Tensor};
use test_unit::inputs::Inputs;

/// The agreement with exit 16 that unit 8 must hold.
const TARGET: f64 = 0.9;
/// Where unit 8's threshold starts: far too low for the target.
const START: f64 = 0.3;
/// Requests (one sample each) the controller is given to reach the target.
const LEARNING_REQUESTS: u64 = 600;
/// How long the test waits for shadow work still on its way back.
const PATIENCE: Duration = Duration::from_secs(60);

/// The heads-only demo model and its validation and test sets, trained if missing.
fn demo_model() -> (PathBuf, PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(root.join("scripts/trained_model.sh"))
        .arg("--heads-only")
        .status()
        .expect("run scripts/trained_model.sh");
    assert!(status.success(), "scripts/trained_model.sh --heads-only failed");
    let cache = std::env::var_os("DNET_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/dnet"),
        PathBuf::from,
    );
    let demo = cache.join("demo");
    (
        demo.join("digits-heads.safetensors"),
        demo.join("digits-validation.bin"),
        demo.join("digits-test.bin"),
    )
}

/// Per sample of `dataset`: exit 8's confidence and category, and exit 16's category.
fn reference(weights: &Path, dataset: &Path) -> Vec<(f64, i64, i64)> {
    let model = load(&WeightSource::File(weights.to_owned()), Device::Cpu, Precision::F32)
        .expect("weights")
        .model;
    let inputs = Inputs::dataset(dataset).expect("a dataset");
    let n = inputs.records().expect("a file");
    let batch = inputs.request(0, n).image;
    let probs = model.exit_probs(&batch).expect("forward");
    let (early, last) = (&probs[7], &probs[15]);
    let column = |t: &Tensor| -> Vec<i64> { Vec::try_from(t).expect("a vector") };
    let confidence: Vec<f64> = Vec::try_from(early.max_dim(1, false).0.to_kind(tch::Kind::Double)).expect("a vector");
    let early_category = column(&early.argmax(1, false));
    let last_category = column(&last.argmax(1, false));
    (0..confidence.len())
        .map(|i| (confidence[i], early_category[i], last_category[i]))
        .collect()
}

/// Of the samples exit 8 answers at `threshold`: how many, and the share exit 16 answers alike.
fn agreement_at(reference: &[(f64, i64, i64)], threshold: f64) -> (usize, f64) {
    let answered: Vec<_> = reference.iter().filter(|s| s.0 >= threshold).collect();
    let agreed = answered.iter().filter(|s| s.1 == s.2).count();
    (answered.len(), agreed as f64 / answered.len().max(1) as f64)
}

/// Runs test-unit against `address` with `args`; the `--answers` lines.
fn run_test_unit(address: &str, args: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let answers = dir.path().join("answers.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_test-unit"))
        .args(["-a", address, "--timeout", "60s", "--answers"])
        .arg(&answers)
        .args(args)
        .output()
        .expect("run test-unit");
    assert!(
        output.status.success(),
        "test-unit failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(&answers)
        .expect("answers written")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_traffic_raises_a_threshold_far_too_low_until_fresh_requests_hold_the_target() {
    let (weights, validation, test) = tokio::task::spawn_blocking(demo_model).await.expect("join");
    let fresh = reference(&weights, &test);
    let (_, at_start) = agreement_at(&fresh, START);
    assert!(
        at_start < TARGET - 0.05,
        "the premise: at {START} exit 8 agrees with exit 16 on {at_start:.3} of the test set, well under {TARGET}"
    );

    let weights = weights.to_str().expect("a path");
    let last = TransmissionUnit::direct(16, 0, &["--weights", weights])
        .await
        .expect("unit 16");
    let thresholds: Vec<String> = (1..=15)
        .map(|e| if e == 8 { START.to_string() } else { "1".into() })
        .collect();
    let first = TransmissionUnit::direct(
        8,
        0,
        &[
            "--weights",
            weights,
            "-n",
            &last.endpoint(),
            "--thresholds",
            &thresholds.join(","),
            "--shadow-rate",
            "1",
            "--target-agreement",
            &TARGET.to_string(),
            "--threshold-range",
            &format!("{START}..0.9999"),
        ],
    )
    .await
    .expect("unit 8");
    let address = first.endpoint();

    let learning = LEARNING_REQUESTS.to_string();
    let validation = validation.to_str().expect("a path").to_owned();
    tokio::task::spawn_blocking({
        let address = address.clone();
        move || run_test_unit(&address, &["-n", &learning, "--dataset", &validation])
    })
    .await
    .expect("join");
    // Shadow outcomes arrive after their calls were answered: wait for them.
    let (threshold, shadows) = wait_for(
        "shadow work back from exit 16 and the threshold risen",
        PATIENCE,
        || async {
            let metrics = first.metrics().await.ok()?;
            let threshold = metrics.value("dnet_exit_threshold").ok()?;
            let shadows: f64 = ["agreed", "disagreed"]
                .iter()
                .map(|outcome| metrics.labelled("dnet_shadow_total", "outcome", outcome).unwrap_or(0.0))
                .sum();
            (shadows > 0.0 && threshold > START).then_some((threshold, shadows))
        },
    )
    .await
    .expect("the threshold rose from its start with shadow work");

    let records = fresh.len().to_string();
    let test = test.to_str().expect("a path").to_owned();
    let lines = tokio::task::spawn_blocking(move || run_test_unit(&address, &["-n", &records, "--dataset", &test]))
        .await
        .expect("join");
    let mut exits: HashMap<u64, usize> = HashMap::new();
    let (mut early, mut agreed) = (0, 0);
    for line in &lines {
        let index = usize::try_from(line["request"].as_u64().expect("request number")).expect("an index");
        let exit = line["exits"][0].as_u64().unwrap_or_else(|| panic!("answered: {line}"));
        *exits.entry(exit).or_default() += 1;
        if exit == 8 {
            early += 1;
            agreed += usize::from(line["categories"][0].as_i64() == Some(fresh[index].2));
        }
    }
    let measured = agreed as f64 / early.max(1) as f64;
    eprintln!(
        "threshold {START} -> {threshold:.4} after {LEARNING_REQUESTS} requests ({shadows} shadow outcomes); \
         fresh: {early} of {} answered at exit 8, agreeing on {measured:.3}; exits {exits:?}",
        fresh.len()
    );
    assert_eq!(lines.len(), fresh.len(), "every fresh request answered: {exits:?}");
    assert!(
        early * 5 >= fresh.len(),
        "exit 8 still answers a fair share of the fresh requests ({early} of {}); threshold {threshold}",
        fresh.len()
    );
    assert!(
        measured >= TARGET,
        "fresh requests answered at exit 8 agree with exit 16 on {measured:.3} ({agreed} of {early}), \
         under the target {TARGET}; threshold after learning {threshold}, exits {exits:?}"
    );
}
