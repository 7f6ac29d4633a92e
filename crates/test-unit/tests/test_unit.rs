//! `test-unit` against a real unit (transmission unit + computation unit on
//! the real RabbitMQ, random weights), in each of its modes.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use computation_unit::engine::Engine;
use computation_unit::model::{DEFAULT_THRESHOLDS, TRUNK_LAYERS};
use computation_unit::request::UnitSettings;
use computation_unit::weights::{load, WeightSource};
use computation_unit::worker::{self, WorkerMetrics, WorkerSettings};
use serde_json::Value;
use tch::Device;
use test_unit::inputs::{Inputs, RECORD_BYTES};
use tokio_util::sync::CancellationToken;

const SEED: u64 = 1;

fn amqp_uri() -> String {
    std::env::var("DNET_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// One unit of exit 16: a transmission unit and a computation unit, in this process.
struct TestUnit {
    address: String,
    queue: String,
    stop: CancellationToken,
}

impl TestUnit {
    async fn start() -> TestUnit {
        let queue = format!("dnet-test-{}", uuid::Uuid::new_v4());
        let stop = CancellationToken::new();
        let settings = UnitSettings {
            exit: TRUNK_LAYERS,
            thresholds: DEFAULT_THRESHOLDS,
            max_batch: 8,
            unit_name: "cu-16".into(),
            device: Device::Cpu,
        };
        let engine = tokio::task::spawn_blocking(move || Engine::start(WeightSource::Random(SEED), settings, Some(1)))
            .await
            .expect("join")
            .expect("model loads");
        let worker_settings = WorkerSettings {
            amqp_uri: amqp_uri(),
            queue: queue.clone(),
            prefetch: 2,
            connection_name: "test worker".into(),
            tls_ca: None,
        };
        let metrics = WorkerMetrics::register(&mut prometheus_client::registry::Registry::default());
        tokio::spawn(worker::run(
            worker_settings,
            Arc::new(engine),
            metrics,
            stop.clone().cancelled_owned(),
        ));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let uri = amqp_uri();
        let config = <transmission_unit::config::Config as clap::Parser>::try_parse_from([
            "transmission-unit",
            "-a",
            &uri,
            "-q",
            &queue,
            "--unit-name",
            "unit-16",
        ])
        .expect("flags");
        tokio::spawn(transmission_unit::server::run(
            listener,
            None,
            config,
            stop.clone().cancelled_owned(),
        ));
        let unit = TestUnit { address, queue, stop };
        unit.wait_for_worker().await;
        unit
    }

    async fn wait_for_worker(&self) {
        for _ in 0..300 {
            if let Ok(mut client) = dnet_proto::DNetClient::connect(format!("http://{}", self.address)).await {
                if let Ok(status) = client.qstatus(dnet_proto::QstatusRequest {}).await {
                    if status.into_inner().consumer >= 1 {
                        return;
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the test worker never consumed {}", self.queue);
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let connection = lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let _ = channel
            .queue_delete(
                self.queue.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await;
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
    let model = load(&WeightSource::Random(SEED), Device::Cpu).expect("weights").model;
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
    let unit = TestUnit::start().await;
    let address = unit.address.clone();

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

    // A CIFAR-10 file written here: labels give an accuracy we can check.
    let dir = tempfile::tempdir().expect("temp dir");
    let dataset = dir.path().join("data_batch.bin");
    let expected = write_cifar(&dataset, 10);
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

    // Open loop at a fixed rate.
    let (ok, report) = run_test_unit(args(&["-a", &address, "-n", "6", "--rate", "20"])).await;
    assert!(ok, "{report}");
    assert_eq!(
        (report["sent"].as_u64(), report["answered"].as_u64()),
        (Some(6), Some(6))
    );

    unit.stop().await;
}

#[tokio::test]
async fn a_unit_that_is_down_counts_errors_and_fails() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
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

/// Writes `n` CIFAR-10 records (pseudo-random pixels, labels 0..9 cycling) and
/// returns the accuracy the model at exit 16 must reach on them.
fn write_cifar(path: &Path, n: usize) -> f64 {
    let mut bytes = Vec::with_capacity(n * RECORD_BYTES);
    for i in 0..n {
        bytes.push((i % 10) as u8);
        bytes.extend((0..RECORD_BYTES - 1).map(|j| ((i * 7919 + j * 104_729) % 251) as u8));
    }
    std::fs::write(path, &bytes).expect("write dataset");
    let inputs = Inputs::dataset(path).expect("a valid dataset");
    let model = load(&WeightSource::Random(SEED), Device::Cpu).expect("weights").model;
    let correct = (0..n as u64)
        .filter(|&i| {
            let sample = inputs.get(i);
            let probs = model.forward(&sample.image, 0, 16).expect("forward").probs;
            probs.argmax(1, false).int64_value(&[0]) == i64::from(sample.label.expect("label"))
        })
        .count();
    correct as f64 / n as f64
}
