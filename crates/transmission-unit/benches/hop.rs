//! One hop on loopback: a transmission unit with an instantly answering
//! worker, and a direct unit computing one layer.
//!
//! Measures the release `transmission-unit` process (gRPC in, AMQP RPC out)
//! and, as the baseline of the same run, the bare AMQP RPC it performs
//! (`QueueClient` in this process, no gRPC, no second process); then the
//! release direct unit (`computation-unit serve`) computing the one layer
//! after the tensor's boundary, its compute time (from its hop record)
//! subtracted from each call. Writes a Markdown section to
//! `$DNET_BENCH_OUT` (default `bench-out/transmission-unit.md`).
//!
//! Run: `cargo bench -p transmission-unit --bench hop` (or `make bench`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::future::Future;
use std::time::Duration;

use common::{success, Behaviour, Worker};
use dnet_common::http2;
use dnet_proto::{ComputationRequest, DNetClient};
use dnet_testkit::otlp::OtlpReceiver;
use dnet_testkit::stats::{closed_loop, closed_loop_repeats, Run, Summary};
use dnet_testkit::{Broker, TestQueue, TransmissionUnit};
use prost::Message;
use safetensors::tensor::{Dtype, TensorView};
use tokio::time::Instant;
use transmission_unit::queue_client::{QueueClient, QueueSettings};

const WARMUP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(2);
const REPEATS: usize = 5;
/// A normalised 3x32x32 image (start_layer 0) and a layer-8 boundary tensor (288x24x24).
const SIZES: [(&str, usize); 2] = [("12 KB", 3 * 32 * 32 * 4), ("660 KB", 288 * 24 * 24 * 4)];
/// The same two tensors as a direct unit takes them: (label, start layer, shape).
const DIRECT: [(&str, u64, [usize; 4]); 2] = [("12 KB", 0, [1, 3, 32, 32]), ("660 KB", 8, [1, 288, 24, 24])];
const CONCURRENCY: [usize; 2] = [1, 32];

/// Median of REPEATS runs (range) of each statistic.
struct Stats {
    p50_ms: Summary,
    p99_ms: Summary,
    rps: Summary,
}

/// The median (range) of each statistic of `runs`.
fn stats_of(runs: &[Run]) -> Stats {
    let of = |f: fn(&Run) -> f64| Summary::of(&runs.iter().map(f).collect::<Vec<_>>());
    Stats {
        p50_ms: of(|r| r.p50_ms),
        p99_ms: of(|r| r.p99_ms),
        rps: of(|r| r.per_second),
    }
}

/// Runs `call` from `concurrency` closed-loop callers, REPEATS times.
async fn measure<F, Fut>(concurrency: usize, call: F) -> Stats
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (rps, p50_ms, p99_ms) = closed_loop_repeats(REPEATS, concurrency, WARMUP, MEASURE, call).await;
    Stats { p50_ms, p99_ms, rps }
}

#[tokio::main]
async fn main() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    // Instant worker: a small SUCCESS result, as a real exit-16 answer would be.
    let worker = Worker::start(&broker, queue.name(), 64, |_| {
        Behaviour::Reply(success(16, vec![0; 200]))
    })
    .await;

    let unit = TransmissionUnit::start(&broker, queue.name(), &[])
        .await
        .expect("the release transmission unit starts");
    let client = client_of(&unit).await;

    let bare = QueueClient::start(QueueSettings {
        uris: vec![broker.uri.clone()],
        queue: queue.name().to_owned(),
        contract: dnet_amqp::QueueContract {
            queue_type: dnet_amqp::QueueType::Classic,
            max_attempts: 3,
        },
        node: Default::default(),
        refused_publishes: Default::default(),
        connection_name: "bench baseline".into(),
        tls_ca: None,
        max_message_bytes: 64 << 20,
        pending_gauge: Default::default(),
        late_replies: Default::default(),
        waiting_gauge: Default::default(),
    });
    let mut connected = bare.connected();
    while !*connected.borrow_and_update() {
        connected.changed().await.expect("baseline client connects");
    }

    let mut rows = Vec::new();
    for (size_label, size) in SIZES {
        let request = ComputationRequest {
            start_layer: 0,
            x: vec![7; size].into(),
            ..ComputationRequest::default()
        };
        let body = request.encode_to_vec();
        for concurrency in CONCURRENCY {
            let hop = measure(concurrency, {
                let (client, request) = (client.clone(), request.clone());
                move || {
                    let (mut client, request) = (client.clone(), request.clone());
                    async move {
                        client.compute(request).await.expect("hop answer");
                    }
                }
            })
            .await;
            let base = measure(concurrency, {
                let (bare, body) = (bare.clone(), body.clone());
                move || {
                    let (bare, body) = (bare.clone(), body.clone());
                    async move {
                        bare.call(&body, 0, tokio::time::Instant::now() + Duration::from_secs(30))
                            .await
                            .expect("reply");
                    }
                }
            })
            .await;
            eprintln!(
                "{size_label} c={concurrency}: hop p50 {:.3} ms, bare p50 {:.3} ms",
                hop.p50_ms, base.p50_ms
            );
            rows.push(format!(
                "| {size_label} | {concurrency} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.0} | {:.2} | {:.2} |",
                hop.p50_ms,
                hop.p99_ms,
                hop.rps,
                base.p50_ms,
                base.p99_ms,
                base.rps,
                hop.p50_ms.median / base.p50_ms.median,
                hop.rps.median / base.rps.median,
            ));
        }
    }

    let traces_rows = traces_on_and_off(&broker, queue.name()).await;
    let baseline_rows = match std::env::var("DNET_HOP_BASELINE") {
        Ok(program) => against_baseline(&program, &broker, queue.name()).await,
        Err(_) => Vec::new(),
    };
    drop(unit);
    bare.close().await;
    worker.stop().await;

    let mut direct_rows = Vec::new();
    for (label, start, shape) in DIRECT {
        let exit = start + 1;
        let unit = TransmissionUnit::direct(u8::try_from(exit).expect("a layer"), 1, &[])
            .await
            .expect("the release direct unit starts");
        // Set up as test-unit's client: the direct unit's replies are large.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", unit.address))
            .expect("an address")
            .initial_stream_window_size(http2::STREAM_WINDOW)
            .initial_connection_window_size(http2::CONNECTION_WINDOW)
            .max_frame_size(http2::MAX_FRAME)
            .connect()
            .await
            .expect("connect");
        let client = DNetClient::new(channel).max_decoding_message_size(64 << 20);
        let request = ComputationRequest {
            start_layer: start,
            x: safetensors_x(shape).into(),
            ..ComputationRequest::default()
        };
        let (overhead, compute) = direct_overhead(&client, &request).await;
        eprintln!("direct {label}: overhead p50 {overhead:.3} ms, compute p50 {compute:.3} ms");
        direct_rows.push(format!(
            "| {label} | {start} -> {exit} | {overhead:.3} | {compute:.3} |"
        ));
    }

    let section = format!(
        "## One transmission-unit hop (loopback, instant worker)\n\n\
         Client -> `transmission-unit` (release, own process) -> RabbitMQ -> worker -> back. Baseline: the bare \
         AMQP RPC the unit performs (publish with confirm, reply queue), from this process without gRPC. \
         Closed loop; each cell the median of {REPEATS} runs of {} s after {} ms warm-up (range); ratios divide \
         medians. The worker replies at once with 200 bytes.\n\n\
         | x | concurrency | hop p50 ms | hop p99 ms | hop req/s | bare p50 ms | bare p99 ms | bare req/s | p50 ratio hop/bare | req/s ratio hop/bare |\n\
         |---|---|---|---|---|---|---|---|---|---|\n{}\n",
        MEASURE.as_secs(),
        WARMUP.as_millis(),
        rows.join("\n")
    );
    let section = format!(
        "{section}\n### One direct-unit hop (loopback, one layer computed)\n\n\
         Client -> `computation-unit serve` (release, own process, one libtorch thread, random weights) -> back, \
         no broker. The unit computes the one layer after the tensor's boundary; each call's overhead is its \
         latency minus the compute time in the unit's hop record. Concurrency 1; each cell the median of \
         {REPEATS} runs' p50 over {} s after {} ms warm-up (range).\n\n\
         | x | layers | overhead p50 ms | compute p50 ms |\n|---|---|---|---|\n{}\n",
        MEASURE.as_secs(),
        WARMUP.as_millis(),
        direct_rows.join("\n")
    );
    let section = format!(
        "{section}\n### Traces on and off (one transmission-unit hop, 12 KB)\n\n\
         Two fresh transmission units on the same queue and worker, one exporting its spans \
         (`--otlp-endpoint`, to an OTLP receiver in this process), measured in turn, repeat by repeat (which goes first alternating), in this \
         run. With traces off no span is created (one relaxed atomic load per call). Each cell the median \
         of {REPEATS} runs of {} s after {} ms warm-up (range).\n\n\
         | concurrency | off p50 ms | off req/s | on p50 ms | on req/s | p50 ratio on/off | req/s ratio on/off |\n\
         |---|---|---|---|---|---|---|\n{}\n",
        MEASURE.as_secs(),
        WARMUP.as_millis(),
        traces_rows.join("\n")
    );
    let section = if baseline_rows.is_empty() {
        section
    } else {
        format!(
            "{section}\n### This build against a baseline build (traces off, 12 KB)\n\n\
             Two fresh transmission units, this build's and `{}` (another build, beside the binaries; \
             `DNET_HOP_BASELINE`), on the same queue and worker, measured in turn, repeat by repeat (which goes first alternating), in this run.\n\n\
             | concurrency | baseline p50 ms | baseline req/s | this build p50 ms | this build req/s | p50 ratio this/baseline | req/s ratio this/baseline |\n\
             |---|---|---|---|---|---|---|\n{}\n",
            std::env::var("DNET_HOP_BASELINE").unwrap_or_default(),
            baseline_rows.join("\n")
        )
    };
    let out = std::env::var("DNET_BENCH_OUT").unwrap_or_else(|_| "bench-out/transmission-unit.md".to_owned());
    if let Some(parent) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(parent).expect("output folder");
    }
    std::fs::write(&out, &section).expect("write the benchmark section");
    println!("{section}");
}

/// The hop at 12 KB from `client` (traces off) and from a unit exporting
/// its spans, in turn, on the same queue: one row per concurrency.
async fn traces_on_and_off(broker: &Broker, queue: &str) -> Vec<String> {
    let plain = TransmissionUnit::start(broker, queue, &[])
        .await
        .expect("the release transmission unit starts");
    let client = client_of(&plain).await;
    let receiver = OtlpReceiver::start().await.expect("an OTLP receiver");
    let traced = TransmissionUnit::start(broker, queue, &["--otlp-endpoint", &receiver.endpoint()])
        .await
        .expect("the release transmission unit starts with traces on");
    let traced_client = client_of(&traced).await;
    let rows = compare(&client, &traced_client, "traces on").await;
    eprintln!("{} spans received", receiver.spans().len());
    rows
}

/// The 12 KB hop through `ours` and through `other`, measured in turn at
/// each concurrency: rows of (ours, other, other/ours for p50, req/s).
async fn compare(
    ours: &DNetClient<tonic::transport::Channel>,
    other: &DNetClient<tonic::transport::Channel>,
    label: &str,
) -> Vec<String> {
    let request = ComputationRequest {
        start_layer: 0,
        x: vec![7; SIZES[0].1].into(),
        ..ComputationRequest::default()
    };
    let hop = |client: DNetClient<tonic::transport::Channel>, request: ComputationRequest| {
        move || {
            let (mut client, request) = (client.clone(), request.clone());
            async move {
                client.compute(request).await.expect("hop answer");
            }
        }
    };
    let mut rows = Vec::new();
    for concurrency in CONCURRENCY {
        // Repeat by repeat, one side then the other, the order swapped each
        // time: a drift of the machine, or an advantage of going first or
        // second, falls on both alike.
        let (mut firsts, mut seconds) = (Vec::new(), Vec::new());
        for repeat in 0..REPEATS {
            let run = |client: &DNetClient<tonic::transport::Channel>| {
                closed_loop(concurrency, WARMUP, MEASURE, hop(client.clone(), request.clone()))
            };
            if repeat % 2 == 0 {
                firsts.push(run(ours).await);
                seconds.push(run(other).await);
            } else {
                seconds.push(run(other).await);
                firsts.push(run(ours).await);
            }
        }
        let (first, second) = (stats_of(&firsts), stats_of(&seconds));
        eprintln!(
            "{label} c={concurrency}: this p50 {:.3} ms, {label} p50 {:.3} ms",
            first.p50_ms, second.p50_ms
        );
        rows.push(format!(
            "| {concurrency} | {:.3} | {:.0} | {:.3} | {:.0} | {:.2} | {:.2} |",
            first.p50_ms,
            first.rps,
            second.p50_ms,
            second.rps,
            second.p50_ms.median / first.p50_ms.median,
            second.rps.median / first.rps.median,
        ));
    }
    rows
}

/// The hop at 12 KB from `client` (this build) and from `program` (another
/// build of the transmission unit), in turn, on the same queue.
async fn against_baseline(program: &str, broker: &Broker, queue: &str) -> Vec<String> {
    let baseline = TransmissionUnit::start_build(program, broker, queue, &[])
        .await
        .expect("the baseline transmission unit starts");
    let this = TransmissionUnit::start(broker, queue, &[])
        .await
        .expect("the release transmission unit starts");
    // Rows read baseline, then this build: the ratios are this/baseline.
    compare(&client_of(&baseline).await, &client_of(&this).await, "this build").await
}

/// A client of `unit`, taking its largest replies.
async fn client_of(unit: &TransmissionUnit) -> DNetClient<tonic::transport::Channel> {
    DNetClient::connect(format!("http://{}", unit.address))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
}

/// A safetensors `x` of zeros shaped `shape` (valid input for its boundary).
fn safetensors_x(shape: [usize; 4]) -> Vec<u8> {
    let bytes = vec![0u8; shape.iter().product::<usize>() * 4];
    let view = TensorView::new(Dtype::F32, shape.to_vec(), &bytes).expect("a view");
    safetensors::serialize([("x", view)], None).expect("serialize")
}

/// (overhead, compute) p50 in ms over REPEATS runs, at concurrency 1: each
/// call's latency minus the compute time in its hop record.
async fn direct_overhead(
    client: &DNetClient<tonic::transport::Channel>,
    request: &ComputationRequest,
) -> (Summary, Summary) {
    let run = |limit: Duration| {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            let (mut overhead, mut compute) = (Vec::new(), Vec::new());
            let until = Instant::now() + limit;
            while Instant::now() < until {
                let started = Instant::now();
                let answer = client
                    .compute(request.clone())
                    .await
                    .expect("direct answer")
                    .into_inner();
                let latency = started.elapsed().as_secs_f64() * 1e3;
                let computed = answer.hops.first().map_or(0.0, |hop| hop.compute_us as f64 / 1e3);
                overhead.push(latency - computed);
                compute.push(computed);
            }
            (Summary::of(&overhead).median, Summary::of(&compute).median)
        }
    };
    run(WARMUP).await;
    let mut runs = Vec::new();
    for _ in 0..REPEATS {
        runs.push(run(MEASURE).await);
    }
    let overhead: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let compute: Vec<f64> = runs.iter().map(|r| r.1).collect();
    (Summary::of(&overhead), Summary::of(&compute))
}
