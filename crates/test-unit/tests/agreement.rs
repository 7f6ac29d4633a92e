//! Live calibration (`--shadow-rate`, `--target-agreement`) on the
//! heads-only demo model (`scripts/trained_model.sh --heads-only`: a random
//! trunk whose exit heads are trained on scikit-learn's digits, so that
//! confidences mean something; trained here first if missing), against the
//! offline choice: `test-unit calibrate`'s, computed in process on the same
//! inputs (every exit's answer per input, `ExitTable`).
//!
//! A cascade of direct units 8 -> 16, the test set as traffic. Unit 8
//! starts far too low (0.05), far too high (0.9999) and at calibrate's
//! choice; each time, once its window is full and its threshold has stopped
//! moving, the same inputs go through it once more and its answers must
//! agree with exit 16's on at least the target less 0.01, while answering
//! at exit 8 no fewer than 10 points under the offline choice (the price of
//! proving the target on a finite window). Then the inputs change (Gaussian
//! noise on the pixels, `test-unit --noise`): the threshold moves up and the
//! target holds on the new inputs.
//!
//! Budget: learning rounds of [`ROUND`] requests of [`SAMPLES`] images
//! (tens of ms of compute each at exit 8 and at exit 16), until settled or
//! [`MAX_ROUNDS`]; settling takes about one window of outcomes (1,000 at
//! this target), two or three rounds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dnet_calibration::live::default_window;
use dnet_model::settings::Precision;
use dnet_model::weights::{load, WeightSource};
use dnet_testkit::{wait_for, TransmissionUnit};
use serde_json::Value;
use tch::Device;
use test_unit::calibrate::{choose, evaluate, Reference, Target};
use test_unit::exit_table::ExitTable;
use test_unit::inputs::Inputs;

/// The agreement unit 8 must hold (the cascade's, as calibrate means it).
const TARGET: f64 = 0.9;
/// Images per request.
const SAMPLES: u64 = 8;
/// Requests per learning round.
const ROUND: u64 = 60;
/// Learning rounds at most before the test fails as unsettled.
const MAX_ROUNDS: usize = 12;
/// Noise of the changed inputs (a standard deviation on the 0..1 pixel scale).
const NOISE: f64 = 0.2;
/// Seed of that noise.
const NOISE_SEED: u64 = 5;
/// How long the test waits for shadow work still on its way back.
const PATIENCE: Duration = Duration::from_secs(120);
/// The two tests run one at a time. Shadow work is computed only while unit
/// 16 is idle: with two cascades on two CPUs it seldom is, most shadow
/// samples expire, and those that come back are not a fair sample of the
/// traffic (the last of each round), which skews the window unit 8 proves
/// its threshold on (a slow machine, 2026-12-07: from 0.9999 it held at
/// 0.9116, 12 points of early share under calibrate's choice).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The heads-only demo model and its test set, trained if missing.
fn demo_model() -> (PathBuf, PathBuf) {
    let model = dnet_testkit::trained::heads_only();
    (model.weights, model.test_set)
}

/// The inputs the traffic sends: the test set, with `noise`.
fn inputs(test: &Path, noise: f64) -> Inputs {
    Inputs::dataset(test).expect("a dataset").with_noise(noise, NOISE_SEED)
}

/// Every exit's answer for the first `count` inputs, computed in process.
fn exit_table(weights: &Path, inputs: &Inputs, count: u64) -> ExitTable {
    let model = load(&WeightSource::File(weights.to_owned()), Device::Cpu, Precision::F32)
        .expect("weights")
        .model;
    ExitTable::compute(&model, inputs, count, 64, Device::Cpu).expect("forward")
}

/// Calibrate's choice for exit 8 on `table`: its threshold and the share it answers at exit 8.
fn offline_choice(table: &ExitTable) -> (f64, f64) {
    let target = Target {
        reference: Reference::FinalExit,
        share: TARGET,
    };
    let cascade = choose(table, target, &[8]).expect("exit 16 alone meets the target");
    let evaluation = evaluate(table, &cascade);
    (cascade.thresholds[7], evaluation.per_exit[0].share)
}

/// Runs test-unit against `address` on `inputs` with `args`; the `--answers` lines.
fn run_test_unit(address: &str, test: &Path, noise: f64, args: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let answers = dir.path().join("answers.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_test-unit"))
        .args(["-a", address, "--timeout", "60s", "--answers"])
        .arg(&answers)
        .arg("--dataset")
        .arg(test)
        .args(["--noise", &noise.to_string(), "--seed", &NOISE_SEED.to_string()])
        .args(["--samples-per-request", &SAMPLES.to_string()])
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

/// Of the samples answered in `lines`: the share answered at exit 8, and
/// the share whose category is exit 16's for the same input (`table`).
fn early_share_and_agreement(lines: &[Value], table: &ExitTable) -> (f64, f64) {
    let (mut samples, mut early, mut agreed) = (0, 0, 0);
    for line in lines {
        let request = line["request"].as_u64().expect("request number");
        let exits = line["exits"].as_array().unwrap_or_else(|| panic!("answered: {line}"));
        for (k, exit) in exits.iter().enumerate() {
            let index = usize::try_from(request * SAMPLES + k as u64).expect("an index");
            let category = line["categories"][k].as_i64().expect("a category");
            samples += 1;
            early += usize::from(exit.as_u64() == Some(8));
            agreed += usize::from(category == i64::from(table.answer[index][15]));
        }
    }
    (early as f64 / samples as f64, agreed as f64 / samples as f64)
}

/// Unit 8 of the cascade, starting at `start`.
async fn unit_8(weights: &str, last: &TransmissionUnit, start: f64) -> TransmissionUnit {
    let thresholds: Vec<String> = (1..=15)
        .map(|e| if e == 8 { start.to_string() } else { "1".into() })
        .collect();
    TransmissionUnit::direct(
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
            "0.05..0.9999",
        ],
    )
    .await
    .expect("unit 8")
}

/// What unit 8's metrics say: its threshold, the outcomes it has taken in
/// all, and how often it has moved.
async fn controller(unit: &TransmissionUnit) -> Option<(f64, f64, f64)> {
    let metrics = unit.metrics().await.ok()?;
    Some((
        metrics.value("dnet_exit_threshold").ok()?,
        metrics.labelled("dnet_live_outcomes_total", "exit", "8").unwrap_or(0.0),
        metrics.sum("dnet_threshold_moves_total").unwrap_or(0.0),
    ))
}

/// Samples answered at exit 8 in `lines`: each goes to exit 16 as shadow
/// work (`--shadow-rate 1`) and comes back as one shadow outcome.
fn answered_at_8(lines: &[Value]) -> usize {
    lines
        .iter()
        .filter_map(|line| line["exits"].as_array())
        .flatten()
        .filter(|exit| exit.as_u64() == Some(8))
        .count()
}

/// Learning rounds on `test` (with `noise`) until unit 8's window holds
/// these inputs alone (a window of outcomes taken since the first round)
/// and a round ends where it began (no move); the rounds it took and the
/// threshold it settled at. `shadow_sent` counts the shadow samples sent so
/// far (unit 8 may have answered some before).
async fn settle(unit: &TransmissionUnit, test: &Path, noise: f64, shadow_sent: &mut usize) -> (usize, f64) {
    let address = unit.endpoint();
    let (_, taken_before, _) = controller(unit).await.expect("unit 8's metrics");
    let mut last_moves = None;
    for round in 1..=MAX_ROUNDS {
        let (address, test) = (address.clone(), test.to_owned());
        let lines = tokio::task::spawn_blocking(move || {
            run_test_unit(&address, &test, noise, &["-n", &ROUND.to_string(), "-c", "2"])
        })
        .await
        .expect("join");
        *shadow_sent += answered_at_8(&lines);
        // Shadow outcomes come back after their calls: wait for every one.
        let sent = *shadow_sent as f64;
        let (threshold, taken, moves) = wait_for("shadow work back from exit 16", PATIENCE, || async {
            let outcomes = unit.metrics().await.ok()?.sum("dnet_shadow_total").ok()?;
            if outcomes < sent {
                return None;
            }
            controller(unit).await
        })
        .await
        .expect("every shadow sample's outcome");
        let taken = taken - taken_before;
        eprintln!("round {round}: threshold {threshold:.4}, outcomes taken {taken}, moves {moves}");
        // Unit 8's window: its default for the target.
        if taken >= default_window(Some(TARGET)) as f64 && last_moves == Some(moves) {
            return (round, threshold);
        }
        last_moves = Some(moves);
    }
    panic!("unit 8 did not settle in {MAX_ROUNDS} rounds of {ROUND} requests");
}

/// One pass of the inputs the table covers through unit 8: its early share and agreement.
async fn verify(unit: &TransmissionUnit, test: &Path, noise: f64, table: &ExitTable) -> (f64, f64) {
    let requests = (table.len() as u64 / SAMPLES).to_string();
    let (address, test) = (unit.endpoint(), test.to_owned());
    let lines = tokio::task::spawn_blocking(move || run_test_unit(&address, &test, noise, &["-n", &requests]))
        .await
        .expect("join");
    early_share_and_agreement(&lines, table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_far_below_far_above_and_at_the_offline_choice_it_settles_where_calibrate_puts_it() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (weights, test) = tokio::task::spawn_blocking(demo_model).await.expect("join");
    let clean = inputs(&test, 0.0);
    // The whole test set, as often as it is sent in one pass.
    let count = clean.records().expect("a file") / SAMPLES * SAMPLES;
    let table = exit_table(&weights, &clean, count);
    let (offline, offline_share) = offline_choice(&table);
    let weights = weights.to_str().expect("a path");
    let last = TransmissionUnit::direct(16, 0, &["--weights", weights])
        .await
        .expect("unit 16");
    let mut failures = Vec::new();
    for start in [0.05, 0.9999, offline] {
        let first = unit_8(weights, &last, start).await;
        let (rounds, settled) = settle(&first, &test, 0.0, &mut 0).await;
        let (early, agreement) = verify(&first, &test, 0.0, &table).await;
        let line = format!(
            "from {start:.4}: settled at {settled:.4} in {rounds} rounds (calibrate: {offline:.4}); the test set \
             answered at exit 8: {early:.3} (calibrate: {offline_share:.3}), agreeing with exit 16: {agreement:.3}"
        );
        eprintln!("{line}");
        if agreement < TARGET - 0.01 || early < offline_share - 0.10 {
            failures.push(line);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_inputs_change_the_threshold_moves_so_that_the_target_holds_on_them() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (weights, test) = tokio::task::spawn_blocking(demo_model).await.expect("join");
    let (clean, noisy) = (inputs(&test, 0.0), inputs(&test, NOISE));
    // The noisy inputs the learning rounds send, and the clean test set.
    let clean_table = exit_table(&weights, &clean, clean.records().expect("a file") / SAMPLES * SAMPLES);
    let noisy_table = exit_table(&weights, &noisy, ROUND * SAMPLES);
    let (before, _) = offline_choice(&clean_table);
    let (after, after_share) = offline_choice(&noisy_table);
    let (_, noisy_agreement_before) = {
        let mut at_before = test_unit::calibrate::Cascade {
            thresholds: [1.0; 15],
            exits: vec![8],
        };
        at_before.thresholds[7] = before;
        let evaluation = evaluate(&noisy_table, &at_before);
        (evaluation.per_exit[0].share, evaluation.agreement)
    };
    assert!(
        noisy_agreement_before < TARGET - 0.03,
        "the premise: at calibrate's threshold for the clean inputs ({before:.4}), the noisy ones agree on \
         {noisy_agreement_before:.3}, well under {TARGET}"
    );

    let weights = weights.to_str().expect("a path");
    let last = TransmissionUnit::direct(16, 0, &["--weights", weights])
        .await
        .expect("unit 16");
    let first = unit_8(weights, &last, before).await;
    let mut shadow_sent = 0;
    let (_, settled_clean) = settle(&first, &test, 0.0, &mut shadow_sent).await;
    let (rounds, settled_noisy) = settle(&first, &test, NOISE, &mut shadow_sent).await;
    let (early, agreement) = verify(&first, &test, NOISE, &noisy_table).await;
    eprintln!(
        "clean: settled at {settled_clean:.4} (calibrate {before:.4}); noisy: settled at {settled_noisy:.4} in \
         {rounds} rounds (calibrate {after:.4}); the noisy inputs answered at exit 8: {early:.3} (calibrate: \
         {after_share:.3}), agreeing with exit 16: {agreement:.3}"
    );
    assert!(
        settled_noisy > settled_clean,
        "the threshold rose with the harder inputs: {settled_clean} -> {settled_noisy}"
    );
    assert!(
        agreement >= TARGET - 0.01,
        "on the noisy inputs the answers agree with exit 16 on {agreement:.3}, under {TARGET} - 0.01"
    );
    assert!(
        early >= after_share - 0.10,
        "exit 8 answers {early:.3} of the noisy inputs, over 10 points under calibrate's {after_share:.3}"
    );
}
