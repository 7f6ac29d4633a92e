//! `test-unit plan` on a real calibration report and known per-layer times:
//! every 2-unit split is ranked, each calibrated for its own exits, and its
//! figures are the stated model's, recomputed here.

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
    test_unit(&[
        "calibrate",
        "--random-weights",
        "2",
        "--synthetic",
        "60",
        "--target-agreement",
        "0.9",
        "--json",
        &at("calibration.json"),
    ]);
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
    for p in predictions {
        let exit = p["exits"][0].as_u64().expect("exit") as usize;
        assert_eq!(p["exits"][1], 16);
        let answered: Vec<f64> = p["answered"]
            .as_array()
            .expect("shares")
            .iter()
            .map(|s| s.as_f64().expect("share"))
            .collect();
        assert!((answered[0] + answered[1] - 1.0).abs() < 1e-9);
        assert!(
            p["agreement"].as_f64().expect("agreement") >= 0.9,
            "each split meets the target: {p}"
        );
        let values: usize = BOUNDARY_SHAPES[exit].iter().product();
        let bytes = (values * 4 + 200) as f64;
        let link_bytes = p["link_bytes"][0].as_f64().expect("bytes");
        assert!((link_bytes - answered[1] * bytes).abs() < 1e-6, "exit {exit}");
        let first = exit as f64 * TRUNK_MS + HEAD_MS;
        let second = RTT_MS + bytes / BYTES_PER_MS + (16 - exit) as f64 * TRUNK_MS + HEAD_MS;
        let mean = answered[0] * first + answered[1] * (first + second);
        let got = p["mean_ms"].as_f64().expect("mean");
        assert!(
            (got - mean).abs() < 1e-6,
            "exit {exit}: mean {got} ms, the model gives {mean}"
        );
    }
}
