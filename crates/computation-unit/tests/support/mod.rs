//! The computation unit's own test pieces: inputs, requests, and `infer` as a
//! reference. Programs, queues and waiting come from `dnet-testkit`.
#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;
use std::path::Path;

use dnet_model::codec;
use dnet_proto::{ComputationRequest, ComputationResponse, Data};
use tch::Tensor;

/// Normalised-image-like input [n, 3, 32, 32], the same for the same seed
/// whatever other tests draw beside it.
pub fn images(n: i64, seed: u64) -> Tensor {
    dnet_model::weights::seeded(seed, || {
        Tensor::randn([n, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu))
    })
}

/// A request carrying `x` for `start_layer`.
pub fn request(start_layer: u64, x: &Tensor) -> ComputationRequest {
    ComputationRequest {
        start_layer,
        x: codec::encode_x(x).expect("encode").into(),
        ..ComputationRequest::default()
    }
}

/// The 15 thresholds all set to `value`, as `--thresholds` takes them.
pub fn thresholds(value: f64) -> String {
    vec![format!("{value}"); 15].join(",")
}

/// The tensors of a SUCCESS answer's `result`.
pub fn result_tensors(response: &ComputationResponse) -> HashMap<String, Tensor> {
    let Some(Data::Result(bytes)) = &response.data else {
        panic!("no result in {:?}", response.status)
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("result.safetensors");
    std::fs::write(&path, bytes).expect("write");
    Tensor::read_safetensors(&path)
        .expect("result is safetensors")
        .into_iter()
        .collect()
}

/// Runs `computation-unit infer` and returns its output tensors by name.
pub fn infer(dir: &Path, x: &Tensor, seed: u64, start: usize, exit: u8) -> HashMap<String, Tensor> {
    let input = dir.join(format!("in-{start}-{exit}.safetensors"));
    let output = dir.join(format!("out-{start}-{exit}.safetensors"));
    std::fs::write(&input, codec::encode_x(x).expect("encode")).expect("write input");
    dnet_testkit::programs::infer(&input, &output, seed, start, usize::from(exit)).expect("infer runs");
    Tensor::read_safetensors(&output)
        .expect("read output")
        .into_iter()
        .collect()
}

/// Exit `exit`'s outputs for `x` from the weights file `weights`, computed
/// in this process (the model a unit started with `--weights` serves).
pub fn infer_weights(weights: &Path, x: &Tensor, start: usize, exit: usize) -> HashMap<String, Tensor> {
    use dnet_model::settings::Precision;
    use dnet_model::weights::{load, WeightSource};
    let model = load(
        &WeightSource::File(weights.to_owned()),
        tch::Device::Cpu,
        Precision::F32,
    )
    .expect("weights")
    .model;
    let output = model.forward(x, start, exit).expect("forward");
    HashMap::from([("probs".to_owned(), output.probs), ("logits".to_owned(), output.logits)])
}

/// A cascade of both layouts: a direct unit 0->8, a broker unit 8->12 (a
/// transmission unit and a worker on a queue of its own), a direct unit
/// 12->16; random weights `seed`, `thresholds` at every unit, 60 s deadlines.
/// Fields drop in order: the programs stop before their queue is deleted.
pub struct MixedCascade {
    pub first: dnet_testkit::TransmissionUnit,
    pub middle: dnet_testkit::TransmissionUnit,
    _worker: dnet_testkit::ComputationUnit,
    pub last: dnet_testkit::TransmissionUnit,
    _queue: dnet_testkit::TestQueue,
}

impl MixedCascade {
    pub async fn start(broker: &dnet_testkit::Broker, seed: u64, thresholds: &str) -> MixedCascade {
        use dnet_testkit::{ComputationUnit, TestQueue, TransmissionUnit};
        let queue = TestQueue::new(broker);
        let timeout = ["--timeout", "60s"];
        let last = TransmissionUnit::direct(16, seed, &timeout)
            .await
            .expect("unit 16 starts");
        let worker = ComputationUnit::start(broker, queue.name(), 12, seed, &["--thresholds", thresholds])
            .await
            .expect("worker starts");
        let middle = TransmissionUnit::start(broker, queue.name(), &["--timeout", "60s", "-n", &last.endpoint()])
            .await
            .expect("transmission unit starts");
        let first = TransmissionUnit::direct(
            8,
            seed,
            &["--timeout", "60s", "--thresholds", thresholds, "-n", &middle.endpoint()],
        )
        .await
        .expect("unit 8 starts");
        MixedCascade {
            first,
            middle,
            _worker: worker,
            last,
            _queue: queue,
        }
    }
}
