//! One unit against the engine it wraps, for BENCHMARKS.md.
//!
//! A unit of exit 16 (the release transmission-unit and computation-unit
//! processes, RabbitMQ between them, 2 libtorch threads) driven by closed-loop
//! gRPC callers at concurrency 1, 4, 16 and 64, with batching on (the default)
//! and off (`--max-batch-size 1`), against the same engine in this process
//! (same threads, same batching, same inputs, no gRPC, no broker). At
//! concurrency 1: the unit's latency against the bare forward. Every figure
//! is the median of repeats with their range. Writes a Markdown section to
//! `$DNET_BENCH_OUT` (default bench-out/unit.md).
//!
//! The bare forward and the in-process engine each run in a fresh process
//! (this benchmark again, with `DNET_BENCH_PART`), as the computation unit
//! does: in one process, whatever ran libtorch first left its OpenMP threads
//! behind and slowed what ran second by 10-15% here.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dnet_model::batch::BatchPolicy;
use dnet_model::codec;
use dnet_model::engine::{Engine, EngineSettings, Job, Outcome};
use dnet_model::model::DEFAULT_THRESHOLDS;
use dnet_model::observer::Unobserved;
use dnet_model::request::{Prepared, UnitSettings};
use dnet_model::settings::{default_threads, Precision};
use dnet_model::weights::{load, WeightSource};
use dnet_proto::ComputationRequest;
use dnet_testkit::stats::{closed_loop_repeats, Summary};
use dnet_testkit::{Broker, ComputationUnit, TestQueue, TransmissionUnit};
use tch::{Device, Kind, Tensor};

const THREADS: i32 = 2;
const CONCURRENCY: [usize; 4] = [1, 4, 16, 64];
const REPEATS: usize = 5;
const REPEAT: Duration = Duration::from_secs(3);
const MAX_BATCH: usize = 32;

/// Names the part a child process measures.
const PART: &str = "DNET_BENCH_PART";

/// Throughput and p50 latency over repeats.
#[derive(serde::Serialize, serde::Deserialize)]
struct Row {
    answers_per_second: Summary,
    p50_ms: Summary,
}

async fn repeats<F, Fut>(concurrency: usize, call: F) -> Row
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (answers_per_second, p50_ms, _) =
        closed_loop_repeats(REPEATS, concurrency, Duration::from_millis(500), REPEAT, call).await;
    Row {
        answers_per_second,
        p50_ms,
    }
}

fn image() -> Tensor {
    tch::manual_seed(3);
    Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu))
}

/// The unit, one row per concurrency.
async fn through_unit(broker: &Broker, batching: bool) -> Vec<Row> {
    let queue = TestQueue::new(broker);
    let unit = TransmissionUnit::start(broker, queue.name(), &["--timeout", "60s"])
        .await
        .expect("transmission unit");
    let max_batch = if batching { MAX_BATCH } else { 1 };
    let _worker = ComputationUnit::start(
        broker,
        queue.name(),
        16,
        1,
        &[
            "--threads",
            &THREADS.to_string(),
            "--max-batch-size",
            &max_batch.to_string(),
        ],
    )
    .await
    .expect("computation unit");
    let client = unit.client().await.expect("client");
    let request = ComputationRequest {
        start_layer: 0,
        x: codec::encode_x(&image()).expect("encode").into(),
        ..ComputationRequest::default()
    };
    let mut rows = Vec::new();
    for concurrency in CONCURRENCY {
        let (client, request) = (client.clone(), request.clone());
        let call = move || {
            let (mut client, request) = (client.clone(), request.clone());
            async move {
                client.compute(request).await.expect("answer");
            }
        };
        let row = repeats(concurrency, call).await;
        eprintln!(
            "unit (batching {batching}) c={concurrency}: {:.1} answers/s",
            row.answers_per_second
        );
        rows.push(row);
    }
    rows
}

/// The same engine in this process, one row per concurrency.
async fn in_process() -> Vec<Row> {
    let unit = UnitSettings {
        max_request_samples: 1,
        ..UnitSettings::new(16, DEFAULT_THRESHOLDS, "in-process")
    };
    let settings = EngineSettings {
        threads: THREADS,
        precision: Precision::F32,
        batching: BatchPolicy {
            max_samples: MAX_BATCH,
            timeout: Duration::ZERO,
        },
    };
    let engine = tokio::task::spawn_blocking(move || {
        Engine::start(WeightSource::Random(1), unit, settings, Arc::new(Unobserved)).expect("engine")
    })
    .await
    .expect("join");
    let engine = Arc::new(engine);
    // The image as bytes: each call decodes its own tensor, as a unit does.
    let x = Arc::new(codec::encode_x(&image()).expect("encode"));
    let mut rows = Vec::new();
    for concurrency in CONCURRENCY {
        let (engine, x) = (Arc::clone(&engine), Arc::clone(&x));
        let call = move || {
            let engine = Arc::clone(&engine);
            let x = codec::decode_x(&x, 0, 1).expect("decode");
            async move {
                let (done, outcome) = tokio::sync::oneshot::channel();
                let job = Job {
                    request: Prepared::new(0, x),
                    received: Instant::now(),
                    deadline: None,
                    done,
                };
                engine.submit(job).expect("engine runs");
                assert!(matches!(outcome.await, Ok(Outcome::Reply(_))));
            }
        };
        let row = repeats(concurrency, call).await;
        eprintln!("in process c={concurrency}: {:.1} answers/s", row.answers_per_second);
        rows.push(row);
    }
    rows
}

/// The bare forward at batch 1: the p50 of each forward's own time, ms,
/// over repeats (the same statistic as the unit's p50 latency, in a process
/// of its own as the unit's worker is).
fn bare_forward() -> Summary {
    tch::set_num_threads(THREADS);
    let model = load(&WeightSource::Random(1), Device::Cpu, Precision::F32)
        .expect("weights")
        .model;
    let _no_grad = tch::no_grad_guard();
    let x = image();
    model.forward(&x, 0, 16).expect("forward");
    let p50s: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let started = Instant::now();
            let mut ms = Vec::new();
            while ms.is_empty() || started.elapsed() < REPEAT {
                let forward = Instant::now();
                model.forward(&x, 0, 16).expect("forward");
                ms.push(forward.elapsed().as_secs_f64() * 1e3);
            }
            Summary::of(&ms).median
        })
        .collect();
    Summary::of(&p50s)
}

/// Runs this benchmark again for one `part`, and reads what it printed.
fn in_child<T: serde::de::DeserializeOwned>(part: &str) -> T {
    let exe = std::env::current_exe().expect("this benchmark");
    let output = std::process::Command::new(exe)
        .env(PART, part)
        .output()
        .expect("run a part of the benchmark");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON from the part")
}

#[tokio::main]
async fn main() {
    match std::env::var(PART).as_deref() {
        Ok("bare") => return println!("{}", serde_json::to_string(&bare_forward()).expect("JSON")),
        Ok("in-process") => return println!("{}", serde_json::to_string(&in_process().await).expect("JSON")),
        _ => {}
    }
    let broker = Broker::local();
    let bare: Summary = in_child("bare");
    let local: Vec<Row> = in_child("in-process");
    let batched = through_unit(&broker, true).await;
    let unbatched = through_unit(&broker, false).await;
    let rows: Vec<String> = CONCURRENCY
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (on, off, limit) = (&batched[i], &unbatched[i], &local[i]);
            format!(
                "| {c} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} |",
                on.answers_per_second,
                off.answers_per_second,
                limit.answers_per_second,
                on.answers_per_second.median / limit.answers_per_second.median,
                on.p50_ms,
                off.p50_ms,
                limit.p50_ms
            )
        })
        .collect();
    let section = format!(
        "## One unit against its engine in process\n\n\
         A unit of exit 16: the release `transmission-unit` and `computation-unit` processes with RabbitMQ \
         between them, {THREADS} libtorch threads, driven over gRPC by closed-loop callers in the benchmark \
         process (one 3x32x32 image per request). In process: the same engine ({THREADS} threads, batches of \
         up to {MAX_BATCH}) fed by as many callers in one process, each decoding its image, no gRPC, no \
         broker; it and the bare forward each run in a fresh process, as the unit's worker does. Everything shares the machine's {} CPUs. Median of {REPEATS} repeats of {} s (range); \
         the ratio divides medians.\n\n\
         | concurrency | unit, batching: answers/s | unit, no batching: answers/s | in process: answers/s | \
         ratio unit (batching) / in process | unit p50 ms | unit p50 ms, no batching | in process p50 ms |\n\
         |---|---|---|---|---|---|---|---|\n{}\n\n\
         At concurrency 1 the unit answers in {:.1} ms (p50 of each call's latency, median of repeats) against \
         {:.1} ms for the bare forward at batch 1 in a process of its own (p50 of each forward's time, median \
         of {REPEATS} repeats, range {:.1}-{:.1}): a ratio of {:.2} (goal <= 1.05). Goal from concurrency 16 \
         up: >= 0.9 of the in-process throughput.\n",
        default_threads(),
        REPEAT.as_secs(),
        rows.join("\n"),
        batched[0].p50_ms.median,
        bare.median,
        bare.min,
        bare.max,
        batched[0].p50_ms.median / bare.median
    );
    let out = std::env::var("DNET_BENCH_OUT").unwrap_or_else(|_| "bench-out/unit.md".to_owned());
    if let Some(parent) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(parent).expect("output folder");
    }
    std::fs::write(&out, &section).expect("write the section");
    println!("{section}");
}
