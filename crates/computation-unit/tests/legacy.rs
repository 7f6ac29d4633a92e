//! Mixing with the original programs: a cascade 8 -> 12 -> 16 of units with
//! `--legacy-pickle` (direct, broker, direct; the tensors handed on pickled)
//! driven by a Python client that encodes as the original client does
//! (`pickle.dumps` of the tensor, `pickle.loads` of the result) answers what
//! the same inputs as safetensors get, at exit 16 and, from a unit whose
//! thresholds are 0, at exit 8; a unit without the flag says it exists.

mod support;

use std::process::Command;

use dnet_model::codec;
use dnet_proto::StatusCode;
use dnet_testkit::{venv_python, Broker, ComputationUnit, TestQueue, TransmissionUnit};
use support::{request, result_tensors, thresholds};

const SEED: u64 = 11;
const REQUESTS: usize = 6;

/// Runs the original client's encoding against `address`; one JSON value per request.
fn original_client(address: &str, count: usize, dir: &std::path::Path) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/legacy/original_client.py");
    let output = Command::new(venv_python())
        .args([script, address, &count.to_string()])
        .arg(dir)
        .output()
        .expect("run the Python client");
    assert!(
        output.status.success(),
        "the Python client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_clients_pickles_get_the_answers_safetensors_get() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let last = TransmissionUnit::direct(16, SEED, &["--legacy-pickle", "--timeout", "60s"])
        .await
        .expect("unit 16 starts");
    let _worker = ComputationUnit::start(
        &broker,
        queue.name(),
        12,
        SEED,
        &["--legacy-pickle", "--thresholds", &thresholds(1.0)],
    )
    .await
    .expect("worker 12 starts");
    let middle = TransmissionUnit::start(&broker, queue.name(), &["--timeout", "60s", "-n", &last.endpoint()])
        .await
        .expect("unit 12 starts");
    let first = TransmissionUnit::direct(
        8,
        SEED,
        &[
            "--legacy-pickle",
            "--thresholds",
            &thresholds(1.0),
            "-n",
            &middle.endpoint(),
            "--timeout",
            "60s",
        ],
    )
    .await
    .expect("unit 8 starts");
    // Answers at exit 8 (every confidence reaches 0): a pickled result from the first unit.
    let early = TransmissionUnit::direct(
        8,
        SEED,
        &["--legacy-pickle", "--timeout", "60s", "--thresholds", &thresholds(0.0)],
    )
    .await
    .expect("early unit 8 starts");

    for (unit, exit) in [(&first, 16), (&early, 8)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let answers = original_client(&unit.endpoint(), REQUESTS, dir.path());
        assert_eq!(answers.len(), REQUESTS);
        let mut client = unit.client().await.expect("client");
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(answer["status"], StatusCode::Success as i32, "request {i}: {answer}");
            // The same image, read from the bytes the Python client sent, as safetensors.
            let pickled = std::fs::read(dir.path().join(format!("input-{i}.pkl"))).expect("the input");
            let x = codec::decode_pickled_x(&pickled, 0, 1).expect("our reader reads it");
            let reply = client.compute(request(0, &x)).await.expect("answer").into_inner();
            assert_eq!((reply.status, reply.exit_layer), (StatusCode::Success as i32, exit));
            let category = result_tensors(&reply)["category"].int64_value(&[0]);
            assert_eq!(
                answer["category"],
                serde_json::json!([category]),
                "request {i} at exit {exit}"
            );
        }
    }

    // Without the flag, the pickle is refused with the way to accept it.
    let plain = TransmissionUnit::direct(16, SEED, &["--timeout", "60s"])
        .await
        .expect("plain unit starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = original_client(&plain.endpoint(), 1, dir.path());
    assert_eq!(refused[0]["status"], StatusCode::Error as i32, "{}", refused[0]);
    let message = refused[0]["error"].as_str().unwrap_or_default();
    assert!(message.contains("--legacy-pickle"), "{message}");
}
