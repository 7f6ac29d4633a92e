//! Mixing with the original programs: a cascade 8 -> 12 -> 16 of units with
//! `--legacy-pickle` (direct, broker, direct; the tensors handed on pickled)
//! driven by a Python client that encodes as the original client does
//! (`pickle.dumps` of the tensor, `pickle.loads` of the result) answers what
//! the same inputs as safetensors get, at exit 16 and, from a unit whose
//! thresholds are 0, at exit 8; a unit that hands on (thresholds 1, no next
//! unit) replies a pickle torch reads as the tensor safetensors carry; a unit
//! without the flag says it exists.
//!
//! The units serve the heads-only trained model and the inputs are digits
//! of its test set, so that answers and confidences differ between images.
//! The Python client writes what it sends and what torch read back, so
//! that both directions are checked against torch, not against our reader.

mod support;

use std::path::Path;
use std::process::Command;

use dnet_model::codec;
use dnet_proto::{Data, StatusCode};
use dnet_testkit::{venv_python, Broker, ComputationUnit, TestQueue, TransmissionUnit};
use support::{request, result_tensors, thresholds};
use tch::{Kind, Tensor};
use test_unit::inputs::Inputs;

const SEED: u64 = 11;
const REQUESTS: usize = 10;

/// Runs the original client's encoding against `address`; one JSON value per request.
fn original_client(address: &str, count: usize, dir: &Path, images: Option<&Path>) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/legacy/original_client.py");
    let output = Command::new(venv_python())
        .args([script, address, &count.to_string()])
        .arg(dir)
        .args(images)
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
    let model = dnet_testkit::trained::heads_only();
    let weights = model.weights_arg();
    let images = Inputs::dataset(&model.test_set)
        .expect("the test set")
        .request(0, REQUESTS as u64)
        .image;
    let images_dir = tempfile::tempdir().expect("temp dir");
    let images_file = images_dir.path().join("images.f32");
    std::fs::write(&images_file, raw_f32(&images)).expect("write the images");
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let last = TransmissionUnit::direct(16, SEED, &["--legacy-pickle", "--timeout", "60s", "--weights", weights])
        .await
        .expect("unit 16 starts");
    let _worker = ComputationUnit::start(
        &broker,
        queue.name(),
        12,
        SEED,
        &[
            "--legacy-pickle",
            "--thresholds",
            &thresholds(1.0),
            "--weights",
            weights,
        ],
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
            "--weights",
            weights,
        ],
    )
    .await
    .expect("unit 8 starts");
    // Answers at exit 8 (every confidence reaches 0): a pickled result from the first unit.
    let early = TransmissionUnit::direct(
        8,
        SEED,
        &[
            "--legacy-pickle",
            "--timeout",
            "60s",
            "--thresholds",
            &thresholds(0.0),
            "--weights",
            weights,
        ],
    )
    .await
    .expect("early unit 8 starts");
    // Hands every request on, to the caller (no next unit): a pickled x.
    let handing = TransmissionUnit::direct(
        8,
        SEED,
        &[
            "--legacy-pickle",
            "--timeout",
            "60s",
            "--thresholds",
            &thresholds(1.0),
            "--weights",
            weights,
        ],
    )
    .await
    .expect("handing unit 8 starts");

    let mut categories = std::collections::BTreeSet::new();
    for (unit, exit) in [(&first, 16), (&early, 8), (&handing, 0)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let answers = original_client(&unit.endpoint(), REQUESTS, dir.path(), Some(&images_file));
        assert_eq!(answers.len(), REQUESTS);
        let mut client = unit.client().await.expect("client");
        for (i, answer) in answers.iter().enumerate() {
            let x = images.narrow(0, i as i64, 1);
            // What the client sent, read by our reader: torch's own values, bit for bit.
            let pickled = std::fs::read(dir.path().join(format!("input-{i}.pkl"))).expect("the input");
            let decoded = codec::decode_pickled_x(&pickled, 0, 1).expect("our reader reads it");
            assert!(decoded.equal(&x), "request {i}: the pickle read is the image sent");
            // The same image as safetensors, from the test's own tensor.
            let reply = client.compute(request(0, &x)).await.expect("answer").into_inner();
            if exit == 0 {
                assert_eq!(answer["status"], StatusCode::NotSuccess as i32, "request {i}: {answer}");
                let Some(Data::NextRequest(next)) = reply.data else {
                    panic!("request {i}: handed on as safetensors too: {:?}", reply.status)
                };
                let expected = codec::decode_x(&next.x, 8, 1).expect("a valid x");
                let handed = std::fs::read(dir.path().join(format!("handed-{i}.f32"))).expect("handed on");
                let handed = Tensor::from_slice(&f32_values(&handed)).reshape(expected.size());
                assert!(
                    handed.equal(&expected),
                    "request {i}: torch reads the pickled x as the safetensors x"
                );
                continue;
            }
            assert_eq!(answer["status"], StatusCode::Success as i32, "request {i}: {answer}");
            assert_eq!((reply.status, reply.exit_layer), (StatusCode::Success as i32, exit));
            let category = result_tensors(&reply)["category"].int64_value(&[0]);
            categories.insert(category);
            assert_eq!(
                answer["category"],
                serde_json::json!([category]),
                "request {i} at exit {exit}"
            );
            let confidence = answer["confidence"].as_f64().expect("a confidence");
            let expected = f64::from(reply.confidence);
            assert!(
                (confidence - expected).abs() <= 1e-5 * expected,
                "request {i} at exit {exit}: confidence {confidence} against {expected}"
            );
        }
    }
    assert!(
        categories.len() >= 3,
        "the digits tell the answers apart: {categories:?}"
    );

    // Without the flag, the pickle is refused with the way to accept it.
    let plain = TransmissionUnit::direct(16, SEED, &["--timeout", "60s"])
        .await
        .expect("plain unit starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = original_client(&plain.endpoint(), 1, dir.path(), None);
    assert_eq!(refused[0]["status"], StatusCode::Error as i32, "{}", refused[0]);
    let message = refused[0]["error"].as_str().unwrap_or_default();
    assert!(message.contains("--legacy-pickle"), "{message}");
}

/// A tensor's values as raw little-endian F32.
fn raw_f32(tensor: &Tensor) -> Vec<u8> {
    let values = Vec::<f32>::try_from(tensor.to_kind(Kind::Float).flatten(0, -1)).expect("F32 values");
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Raw little-endian F32 bytes as values.
fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
