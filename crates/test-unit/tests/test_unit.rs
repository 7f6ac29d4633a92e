//! `test-unit` against a real unit (transmission unit + computation unit on
//! the real RabbitMQ), in each of its modes. The unit serves the heads-only
//! trained model, so that its answers differ from image to image and an
//! accuracy shows whether each image met its own label.

use std::path::Path;
use std::process::Command;

use dnet_model::model::TRUNK_LAYERS;
use dnet_model::settings::Precision;
use dnet_model::weights::{load, WeightSource};
use dnet_testkit::{Broker, ComputationUnit, TestQueue, TransmissionUnit};
use serde_json::Value;
use tch::Device;
use test_unit::inputs::{normalise, Inputs, RECORD_BYTES};

const SEED: u64 = 1;

/// One unit of exit 16: a transmission unit and a computation unit, as processes.
/// Fields drop in order: the programs stop before their queue is deleted.
struct TestUnit {
    transmission: TransmissionUnit,
    _computation: ComputationUnit,
    _queue: TestQueue,
}

impl TestUnit {
    async fn start(broker: &Broker, weights: &Path) -> TestUnit {
        let queue = TestQueue::new(broker);
        let computation = ComputationUnit::start(
            broker,
            queue.name(),
            TRUNK_LAYERS as u8,
            SEED,
            &[
                "--max-request-samples",
                "8",
                "--weights",
                weights.to_str().expect("utf-8"),
            ],
        )
        .await
        .expect("computation unit starts");
        let transmission = TransmissionUnit::start(broker, queue.name(), &["--unit-name", "unit-16"])
            .await
            .expect("transmission unit starts");
        transmission.wait_for_consumers(1).await.expect("the worker consumes");
        TestUnit {
            transmission,
            _computation: computation,
            _queue: queue,
        }
    }
}

/// Runs the binary with `args` plus `--json`; returns (exit success, report).
async fn run_test_unit(args: Vec<String>) -> (bool, Value) {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("temp dir");
        let json = dir.path().join("report.json");
        let output = Command::new(env!("CARGO_BIN_EXE_test-unit"))
            .args(&args)
            .arg("--json")
            .arg(&json)
            .output()
            .expect("run test-unit");
        let text = std::fs::read_to_string(&json)
            .unwrap_or_else(|_| panic!("no report; stderr: {}", String::from_utf8_lossy(&output.stderr)));
        let report: Value = serde_json::from_str(&text).expect("JSON report");
        for key in [
            "sent",
            "answered",
            "errors",
            "local",
            "throughput_rps",
            "latency_ms",
            "exits",
            "accuracy",
            "hops",
        ] {
            assert!(report.get(key).is_some(), "report lacks {key}: {text}");
        }
        (output.status.success(), report)
    })
    .await
    .expect("join")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Confidences at exit `exit` of the synthetic images 0..n with seed `seed`.
fn local_confidences(exit: usize, n: u64, seed: u64) -> Vec<f64> {
    let model = load(&WeightSource::Random(SEED), Device::Cpu, Precision::F32)
        .expect("weights")
        .model;
    let inputs = Inputs::Synthetic(seed);
    (0..n)
        .map(|i| {
            let out = model.forward(&inputs.get(i).image, 0, exit).expect("forward");
            out.probs.max().double_value(&[])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_against_a_real_unit() {
    let model = dnet_testkit::trained::heads_only();
    let unit = TestUnit::start(&Broker::local(), &model.weights).await;
    let address = unit.transmission.endpoint();

    // Raw images, closed loop.
    let (ok, report) = run_test_unit(args(&["-a", &address, "-n", "6", "-c", "2", "--qstatus"])).await;
    assert!(ok, "{report}");
    assert_eq!(
        (
            report["sent"].as_u64(),
            report["answered"].as_u64(),
            report["local"].as_u64()
        ),
        (Some(6), Some(6), Some(0))
    );
    assert_eq!(report["exits"]["16"].as_u64(), Some(6));
    assert!(report["accuracy"].is_null());
    assert!(report["latency_ms"]["p50"].as_f64().is_some_and(|p| p > 0.0));
    assert_eq!(report["hops"][0]["unit"].as_str(), Some("unit-16"));
    assert_eq!(report["qstatus_after"]["consumer"].as_u64(), Some(1));

    // Local exit 4, with a threshold between the confidences: some answer here.
    let n = 8;
    let mut confidences = local_confidences(4, n, 0);
    confidences.sort_by(f64::total_cmp);
    let threshold = (confidences[3] + confidences[4]) / 2.0;
    let thresholds: Vec<String> = (1..=15)
        .map(|e| if e == 4 { threshold.to_string() } else { "1".into() })
        .collect();
    let (ok, report) = run_test_unit(args(&[
        "-a",
        &address,
        "-n",
        &n.to_string(),
        "-e",
        "4",
        "--random-weights",
        &SEED.to_string(),
        "--thresholds",
        &thresholds.join(","),
    ]))
    .await;
    assert!(ok, "{report}");
    let (local, sent) = (
        report["local"].as_u64().expect("local"),
        report["sent"].as_u64().expect("sent"),
    );
    assert_eq!((local, sent), (4, 4), "half above the threshold: {report}");
    assert_eq!(report["answered"].as_u64(), Some(4));
    assert_eq!(report["local_exits"]["4"].as_u64(), Some(4));

    // A local cascade 4 -> 16: the same four answer at 4, the rest at 16, nothing is sent.
    let (ok, report) = run_test_unit(args(&[
        "-a",
        &address,
        "-n",
        &n.to_string(),
        "-e",
        "4,16",
        "--random-weights",
        &SEED.to_string(),
        "--thresholds",
        &thresholds.join(","),
    ]))
    .await;
    assert!(ok, "{report}");
    assert_eq!(
        (report["local"].as_u64(), report["sent"].as_u64()),
        (Some(8), Some(0)),
        "{report}"
    );
    assert_eq!(report["local_exits"]["4"].as_u64(), Some(4), "{report}");
    assert_eq!(report["local_exits"]["16"].as_u64(), Some(4), "{report}");

    // A CIFAR-10 file written here: labels give an accuracy we can check.
    let dir = tempfile::tempdir().expect("temp dir");
    let dataset = dir.path().join("data_batch.bin");
    let expected = write_cifar(
        &dataset,
        10,
        &model.test_set,
        &WeightSource::File(model.weights.clone()),
    );
    let (ok, report) = run_test_unit(args(&[
        "-a",
        &address,
        "-n",
        "10",
        "--dataset",
        dataset.to_str().expect("path"),
    ]))
    .await;
    assert!(ok, "{report}");
    let accuracy = report["accuracy"].as_f64().expect("accuracy with labels");
    assert!(
        (accuracy - expected).abs() < 1e-9,
        "accuracy {accuracy}, expected {expected}"
    );

    // Open loop at a fixed rate, well under what the unit serves (one
    // thread, the whole network: about 12 images/s here): 40 Poisson
    // arrivals at 5/s take about 8 s, far more than one answer's latency.
    // The gaps are drawn from --seed, the same in every run: seed 7's 39
    // gaps sum to 7.8 s (their mean), so the rate measured is 5/s less
    // what the last answer's latency adds.
    let (ok, report) = run_test_unit(args(&["-a", &address, "-n", "40", "--rate", "5", "--seed", "7"])).await;
    assert!(ok, "{report}");
    assert_eq!(
        (report["sent"].as_u64(), report["answered"].as_u64()),
        (Some(40), Some(40))
    );
    // A sender that does not wait its gaps ends sooner, however fast the unit.
    let wall = report["wall_s"].as_f64().expect("wall time");
    assert!(
        wall >= 7.8,
        "40 arrivals at 5/s took {wall:.2} s, less than their gaps' 7.82 s"
    );
    let rate = report["throughput_rps"].as_f64().expect("throughput");
    assert!(
        (rate - 5.0).abs() <= 0.2 * 5.0,
        "--rate 5 held: {rate:.2} answers/s: {report}"
    );
}

/// A request of several samples through a cascade of direct units 8 -> 16:
/// each sample answers at its own exit, and the client counts exits and
/// accuracy per sample (this fails with whole-request counting: two requests
/// cannot make four answers at each exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_of_one_request_exit_at_their_own_units_and_count_per_sample() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dataset = dir.path().join("data_batch.bin");
    write_cifar(
        &dataset,
        8,
        &dnet_testkit::trained::heads_only().test_set,
        &WeightSource::Random(SEED),
    );
    let inputs = Inputs::dataset(&dataset).expect("a valid dataset");
    let model = load(&WeightSource::Random(SEED), Device::Cpu, Precision::F32)
        .expect("weights")
        .model;
    // Per sample: exit 8's confidence, exit 8's and exit 16's category, the label.
    let samples: Vec<(f64, i64, i64, i64)> = (0..8)
        .map(|i| {
            let sample = inputs.get(i);
            let at = |exit| model.forward(&sample.image, 0, exit).expect("forward").probs;
            let (early, last) = (at(8), at(16));
            (
                early.max().double_value(&[]),
                early.argmax(1, false).int64_value(&[0]),
                last.argmax(1, false).int64_value(&[0]),
                i64::from(sample.labels[0].expect("label")),
            )
        })
        .collect();
    // The threshold in the widest gap between the 3rd and 6th confidences:
    // batching cannot move a sample across it.
    let mut sorted: Vec<f64> = samples.iter().map(|s| s.0).collect();
    sorted.sort_by(f64::total_cmp);
    let split = (2..6)
        .max_by(|&a, &b| (sorted[a + 1] - sorted[a]).total_cmp(&(sorted[b + 1] - sorted[b])))
        .expect("a split");
    let threshold = (sorted[split] + sorted[split + 1]) / 2.0;
    let early = samples.iter().filter(|s| s.0 >= threshold).count() as u64;
    let correct = samples
        .iter()
        .filter(|s| (if s.0 >= threshold { s.1 } else { s.2 }) == s.3)
        .count();
    let thresholds: Vec<String> = (1..=15)
        .map(|e| if e == 8 { threshold.to_string() } else { "1".into() })
        .collect();

    let last = TransmissionUnit::direct(16, SEED, &[]).await.expect("unit 16");
    let first = TransmissionUnit::direct(
        8,
        SEED,
        &["-n", &last.endpoint(), "--thresholds", &thresholds.join(",")],
    )
    .await
    .expect("unit 8");
    let (ok, report) = run_test_unit(args(&[
        "-a",
        &first.endpoint(),
        "-n",
        "2",
        "--samples-per-request",
        "4",
        "--dataset",
        dataset.to_str().expect("path"),
    ]))
    .await;
    assert!(ok, "{report}");
    assert_eq!(
        (report["answered"].as_u64(), report["answered_samples"].as_u64()),
        (Some(2), Some(8)),
        "{report}"
    );
    assert_eq!(report["exits"]["8"].as_u64(), Some(early), "{report}");
    assert_eq!(report["exits"]["16"].as_u64(), Some(8 - early), "{report}");
    assert_eq!(report["accuracy"].as_f64(), Some(correct as f64 / 8.0), "{report}");
}

#[tokio::test]
async fn a_unit_that_is_down_counts_errors_and_fails() {
    let port = dnet_testkit::free_port();
    let (ok, report) = run_test_unit(args(&[
        "-a",
        &format!("127.0.0.1:{port}"),
        "-n",
        "3",
        "--timeout",
        "5s",
    ]))
    .await;
    assert!(!ok, "exit status is non-zero when calls fail");
    assert_eq!(report["errors"]["Unavailable"].as_u64(), Some(3), "{report}");
    assert_eq!(
        (report["sent"].as_u64(), report["answered"].as_u64()),
        (Some(3), Some(0))
    );
}

/// Writes `n` CIFAR-10 records: the first `n` digits of `test_set` (the
/// heads-only model's), labelled with what `weights` answers at exit 16 for
/// each, but for every third record, labelled one class off on purpose.
/// Returns the accuracy a client that pairs each image with its own label
/// must report. With the trained weights the answers differ between
/// images, so a client that pairs them otherwise reports another accuracy.
fn write_cifar(path: &Path, n: usize, test_set: &Path, weights: &WeightSource) -> f64 {
    let digits = std::fs::read(test_set).expect("the test set");
    let model = load(weights, Device::Cpu, Precision::F32).expect("weights").model;
    let mut bytes = Vec::with_capacity(n * RECORD_BYTES);
    let mut answers = std::collections::BTreeSet::new();
    let mut correct = 0;
    for (i, record) in digits.chunks_exact(RECORD_BYTES).take(n).enumerate() {
        let pixels = &record[1..];
        let probs = model.forward(&normalise(pixels), 0, 16).expect("forward").probs;
        let answer = probs.argmax(1, false).int64_value(&[0]) as u8;
        answers.insert(answer);
        let wrong = i % 3 == 0;
        bytes.push(if wrong { (answer + 1) % 10 } else { answer });
        bytes.extend_from_slice(pixels);
        correct += usize::from(!wrong);
    }
    std::fs::write(path, &bytes).expect("write dataset");
    if matches!(weights, WeightSource::File(_)) {
        assert!(
            answers.len() >= 3,
            "the trained model tells the images apart: {answers:?}"
        );
    }
    correct as f64 / n as f64
}
