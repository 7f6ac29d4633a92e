//! `test-unit plan` on a real calibration report (the heads-only trained
//! model on the digits, so that confidences and answers vary) and known
//! per-layer times: every 2-unit split is ranked, each calibrated for its
//! own exits, and its figures are the stated model's, recomputed here from
//! the calibration's table of per-input confidences and answers and each
//! prediction's thresholds, not from the plan's own shares.

use std::path::Path;
use std::process::Command;

use dnet_codec::BOUNDARY_SHAPES;
use serde_json::{json, Value};

const TRUNK_MS: f64 = 1.0;
const HEAD_MS: f64 = 0.5;
/// The link: 8 Mbit/s (1000 bytes per ms), 10 ms round trip.
const BYTES_PER_MS: f64 = 1000.0;
const RTT_MS: f64 = 10.0;

fn test_unit(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_test-unit"))
        .args(args)
        .output()
        .expect("run test-unit");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
}

#[test]
fn plan_ranks_every_split_by_the_stated_model() {
    let dir = tempfile::tempdir().expect("temp dir");
    let at = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    let model = dnet_testkit::trained::heads_only();
    let test_set = model.test_set.to_str().expect("utf-8");
    test_unit(&[
        "calibrate",
        "--weights",
        model.weights_arg(),
        "--dataset",
        test_set,
        "--target-agreement",
        "0.9",
        "--json",
        &at("calibration.json"),
    ]);
    let table = &read(&dir.path().join("calibration.json"))["table"];
    let confidence = |i: usize, exit: usize| table["confidence"][i][exit - 1].as_f64().expect("a confidence");
    let answer = |i: usize, exit: usize| table["answer"][i][exit - 1].as_u64().expect("an answer");
    let inputs = table["confidence"].as_array().expect("the table's rows").len();
    assert!(inputs >= 100, "the test set: {inputs} images");
    let times = json!({
        "measured_on": "made up",
        "trunk_ms": vec![TRUNK_MS; 16],
        "head_ms": vec![HEAD_MS; 16],
    });
    std::fs::write(at("times.json"), times.to_string()).expect("write");
    let text = test_unit(&[
        "plan",
        "--calibration",
        &at("calibration.json"),
        "--links",
        "8mbit/10ms",
        "--times",
        &at("times.json"),
        "--hop-overhead",
        "0ms",
        "--json",
        &at("plan.json"),
    ]);
    assert!(text.contains("--thresholds of rank 1:"), "{text}");

    let plan = read(&dir.path().join("plan.json"));
    let predictions = plan.as_array().expect("a list");
    assert_eq!(predictions.len(), 15, "every first exit 1..15, then 16");
    let means: Vec<f64> = predictions
        .iter()
        .map(|p| p["mean_ms"].as_f64().expect("mean"))
        .collect();
    assert!(means.windows(2).all(|w| w[0] <= w[1]), "best first: {means:?}");
    let mut early_shares = Vec::new();
    for p in predictions {
        let exit = p["exits"][0].as_u64().expect("exit") as usize;
        assert_eq!(p["exits"][1], 16);
        let answered: Vec<f64> = p["answered"]
            .as_array()
            .expect("shares")
            .iter()
            .map(|s| s.as_f64().expect("share"))
            .collect();
        // Each input exits at `exit` when its confidence there reaches the
        // prediction's threshold, else at 16; it agrees when that exit's
        // answer is exit 16's.
        let threshold = p["thresholds"][exit - 1].as_f64().expect("a threshold");
        let taken: Vec<usize> = (0..inputs)
            .map(|i| if confidence(i, exit) >= threshold { exit } else { 16 })
            .collect();
        let early = taken.iter().filter(|&&e| e == exit).count() as f64 / inputs as f64;
        let agreeing = (0..inputs).filter(|&i| answer(i, taken[i]) == answer(i, 16)).count() as f64 / inputs as f64;
        assert!(
            (answered[0] - early).abs() < 1e-9 && (answered[1] - (1.0 - early)).abs() < 1e-9,
            "exit {exit} at {threshold}: the plan says {answered:?}, the table {early}"
        );
        let agreement = p["agreement"].as_f64().expect("agreement");
        assert!(
            (agreement - agreeing).abs() < 1e-9,
            "exit {exit}: {agreement} against {agreeing}"
        );
        assert!(agreeing >= 0.9, "each split meets the target: {p}");
        early_shares.push(early);
        let values: usize = BOUNDARY_SHAPES[exit].iter().product();
        let bytes = (values * 4 + 200) as f64;
        let link_bytes = p["link_bytes"][0].as_f64().expect("bytes");
        assert!((link_bytes - answered[1] * bytes).abs() < 1e-6, "exit {exit}");
        let first = exit as f64 * TRUNK_MS + HEAD_MS;
        let second = RTT_MS + bytes / BYTES_PER_MS + (16 - exit) as f64 * TRUNK_MS + HEAD_MS;
        let mean = early * first + (1.0 - early) * (first + second);
        let got = p["mean_ms"].as_f64().expect("mean");
        assert!(
            (got - mean).abs() < 1e-6,
            "exit {exit}: mean {got} ms, the model gives {mean}"
        );
    }
    // The inputs are informative: some splits answer most inputs early, some few.
    let (least, most) = early_shares
        .iter()
        .fold((1.0_f64, 0.0_f64), |(l, m), &s| (l.min(s), m.max(s)));
    assert!(most - least >= 0.3, "early shares from {least} to {most}");
}
