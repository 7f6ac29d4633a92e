//! The computation unit's own test pieces: inputs, requests, and `infer` as a
//! reference. Programs, queues and waiting come from `dnet-testkit`.
#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use dnet_model::codec;
use dnet_proto::{ComputationRequest, ComputationResponse, Data};
use tch::Tensor;

/// Normalised-image-like input [n, 3, 32, 32], deterministic.
pub fn images(n: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([n, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu))
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
    let status = Command::new(env!("CARGO_BIN_EXE_computation-unit"))
        .args(["infer", "--random-weights", &seed.to_string(), "--threads", "1"])
        .args(["--start-layer", &start.to_string(), "--exit-layer", &exit.to_string()])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .status()
        .expect("run infer");
    assert!(status.success());
    Tensor::read_safetensors(&output)
        .expect("read output")
        .into_iter()
        .collect()
}
