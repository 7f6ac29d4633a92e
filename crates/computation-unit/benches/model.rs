//! Model speed and framework overhead, for BENCHMARKS.md.
//!
//! 1. In-process images/s of the tch model and of the PyTorch reference
//!    (tests/reference), same thread count, same run, batch 1 and 32.
//! 2. One request through one unit (transmission unit + RabbitMQ + computation
//!    unit process, exit 16, batch 1) against the bare forward of the same run.
//!
//! Writes a Markdown section to `$DNET_BENCH_OUT` (default bench-out/computation-unit.md).

use std::time::{Duration, Instant};

use dnet_model::codec;
use dnet_model::options::Precision;
use dnet_model::weights::{load, WeightSource};
use dnet_proto::ComputationRequest;
use dnet_testkit::{venv_python, Broker, ComputationUnit, TestQueue, TransmissionUnit};
use tch::{Device, Kind, Tensor};

const THREADS: i32 = 2;
const SECONDS: f64 = 4.0;
const BATCHES: [i64; 2] = [1, 32];

/// Repeats `run` for SECONDS after one warm-up; returns the per-run durations.
fn time_runs(mut run: impl FnMut()) -> Vec<Duration> {
    run();
    let started = Instant::now();
    let mut runs = Vec::new();
    while started.elapsed().as_secs_f64() < SECONDS {
        let one = Instant::now();
        run();
        runs.push(one.elapsed());
    }
    runs
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn reference_rates(weights: &std::path::Path) -> serde_json::Value {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dnet-model/tests/reference/bench_reference.py");
    let mut command = std::process::Command::new(venv_python());
    command
        .arg(&script)
        .arg(weights)
        .arg(THREADS.to_string())
        .arg(SECONDS.to_string());
    command.args(BATCHES.iter().map(ToString::to_string));
    let output = command.output().expect("run bench_reference.py");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON rates")
}

#[tokio::main]
async fn main() {
    tch::set_num_threads(THREADS);
    let loaded = load(&WeightSource::Random(1), Device::Cpu, Precision::F32).expect("random weights");
    let model = loaded.model;
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = dir.path().join("weights.safetensors");
    loaded.vars.save(&weights).expect("save the weights for the reference");
    let _no_grad = tch::no_grad_guard();

    let reference = reference_rates(&weights);
    let mut model_rows = Vec::new();
    let mut bare_batch1 = Duration::ZERO;
    for batch in BATCHES {
        let x = Tensor::randn([batch, 3, 32, 32], (Kind::Float, Device::Cpu));
        let runs = time_runs(|| {
            model.forward(&x, 0, 16).expect("forward");
        });
        let per_run = median(runs);
        if batch == 1 {
            bare_batch1 = per_run;
        }
        let ours = batch as f64 / per_run.as_secs_f64();
        let theirs = reference[batch.to_string()].as_f64().expect("reference rate");
        eprintln!("batch {batch}: tch {ours:.1} img/s, PyTorch {theirs:.1} img/s");
        model_rows.push(format!("| {batch} | {ours:.1} | {theirs:.1} | {:.2} |", ours / theirs));
    }

    // One unit: the same model behind a transmission unit and RabbitMQ.
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = TransmissionUnit::start(&broker, queue.name(), &["--timeout", "60s"])
        .await
        .expect("transmission unit");
    let worker = ComputationUnit::start(&broker, queue.name(), 16, 1, &["--threads", &THREADS.to_string()])
        .await
        .expect("computation unit");
    let mut client = unit.client().await.expect("client");
    let x = codec::encode_x(&Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu))).expect("encode");
    let request = ComputationRequest { start_layer: 0, x };
    client.compute(request.clone()).await.expect("warm-up");
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed().as_secs_f64() < SECONDS {
        let one = Instant::now();
        client.compute(request.clone()).await.expect("answer");
        latencies.push(one.elapsed());
    }
    let through_unit = median(latencies);
    drop((worker, unit));
    eprintln!("one unit: {through_unit:?} vs bare forward {bare_batch1:?}");

    let section = format!(
        "## Computation unit: model speed and framework overhead\n\n\
         In-process forward 0->16 (all 16 layers and the final head), {THREADS} libtorch threads on both sides, \
         random weights, median of {SECONDS} s of runs. PyTorch: the reference implementation in \
         `crates/dnet-model/tests/reference/reference.py` under `torch.no_grad()`, same libtorch 2.11.0.\n\n\
         | batch | tch images/s | PyTorch images/s | ratio tch/PyTorch |\n|---|---|---|---|\n{}\n\n\
         One request (batch 1, exit 16) through one unit: gRPC to the transmission unit, RabbitMQ, the \
         computation-unit process ({THREADS} threads), reply, back; closed loop, median.\n\n\
         | bare forward ms | through one unit ms | overhead ratio unit/bare |\n|---|---|---|\n\
         | {:.2} | {:.2} | {:.2} |\n",
        model_rows.join("\n"),
        bare_batch1.as_secs_f64() * 1e3,
        through_unit.as_secs_f64() * 1e3,
        through_unit.as_secs_f64() / bare_batch1.as_secs_f64()
    );
    let out = std::env::var("DNET_BENCH_OUT").unwrap_or_else(|_| "bench-out/computation-unit.md".to_owned());
    if let Some(parent) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(parent).expect("output folder");
    }
    std::fs::write(&out, &section).expect("write the section");
    println!("{section}");
}
