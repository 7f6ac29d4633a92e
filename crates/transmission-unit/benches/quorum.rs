//! What a quorum queue costs: on one private three-node RabbitMQ cluster,
//! in one run, the same measurements with `--queue-type classic` (the queue
//! on one node) and `--queue-type quorum` (replicated on three, a confirm
//! meaning a majority holds the message):
//!
//! - one transmission-unit hop with an instantly answering worker, 12 KB and
//!   660 KB, concurrency 1 and 32;
//! - the floor under the goal's cell: the same RPC written with lapin alone
//!   (publish with confirm, reply queue, the same worker), no DNet program,
//!   12 KB at concurrency 1, so the goal's ratio can be read against the
//!   broker's own;
//! - the cascade 8 -> 12 -> 16 (release units, random weights, one libtorch
//!   thread each, every sample handed on to exit 16), concurrency 1 and 16.
//!
//! Each program connects to a node of its own (its list starting there), as
//! a deployment spreads them. Writes a Markdown section to
//! `$DNET_BENCH_OUT` (default `bench-out/quorum.md`).
//!
//! Run: `cargo bench -p transmission-unit --bench quorum` (or `make bench`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::future::Future;
use std::time::Duration;

use common::{success, Behaviour, Worker};
use dnet_amqp::{QueueContract, QueueType};
use dnet_proto::{ComputationRequest, DNetClient};
use dnet_testkit::stats::{closed_loop_repeats, Summary};
use dnet_testkit::{ComputationUnit, PrivateCluster, TransmissionUnit};
use futures::StreamExt;
use prost::Message;
use safetensors::tensor::{Dtype, TensorView};

const WARMUP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(2);
const REPEATS: usize = 5;
/// A normalised 3x32x32 image (start_layer 0) and a layer-8 boundary tensor (288x24x24).
const SIZES: [(&str, usize); 2] = [("12 KB", 3 * 32 * 32 * 4), ("660 KB", 288 * 24 * 24 * 4)];
const HOP_CONCURRENCY: [usize; 2] = [1, 32];
const CASCADE_CONCURRENCY: [usize; 2] = [1, 16];
const TYPES: [QueueType; 2] = [QueueType::Classic, QueueType::Quorum];
/// The goal: a quorum hop at most this many times a classic one (12 KB, p50).
const GOAL: f64 = 1.5;

/// Median of REPEATS runs (range) of each statistic.
struct Stats {
    p50_ms: Summary,
    rps: Summary,
}

async fn measure<F, Fut>(concurrency: usize, call: F) -> Stats
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (rps, p50_ms, _) = closed_loop_repeats(REPEATS, concurrency, WARMUP, MEASURE, call).await;
    Stats { p50_ms, rps }
}

fn contract(queue_type: QueueType) -> QueueContract {
    QueueContract {
        queue_type,
        max_attempts: 3,
    }
}

#[tokio::main]
async fn main() {
    let cluster = tokio::task::spawn_blocking(|| PrivateCluster::start(3))
        .await
        .expect("task")
        .expect("a private three-node RabbitMQ cluster");
    let mut hop_rows = Vec::new();
    // The goal's figure: the quorum hop against the classic one at 12 KB, c = 1.
    let mut goal_ratio = None;
    for (label, size) in SIZES {
        for concurrency in HOP_CONCURRENCY {
            let mut cells = Vec::new();
            for queue_type in TYPES {
                cells.push(hop(&cluster, queue_type, size, concurrency).await);
            }
            if goal_ratio.is_none() {
                goal_ratio = Some(cells[1].p50_ms.median / cells[0].p50_ms.median);
            }
            hop_rows.push(row(label, concurrency, &cells));
        }
    }
    let goal_ratio = goal_ratio.unwrap_or(f64::NAN);
    let mut floor = Vec::new();
    for queue_type in TYPES {
        floor.push(bare_rpc(&cluster, queue_type, SIZES[0].1).await);
    }
    let floor_ratio = floor[1].p50_ms.median / floor[0].p50_ms.median;
    let goal = format!(
        "Goal: a quorum hop at most {GOAL}x a classic one at 12 KB (p50, c = 1): **{goal_ratio:.2}x, {}**. \
         The broker's own floor, measured in the same run: the same RPC written with lapin alone (publish with \
         confirm, a reply queue, the same instant worker, no DNet program) takes {:.3} ms on a classic queue \
         and {:.3} ms on a quorum one, p50, **{floor_ratio:.2}x**: the goal is below the broker's own ratio. \
         A quorum publish is confirmed, and delivered, once two of the three nodes have written it to their Raft \
         log and synced it to disk; a classic one once one node holds it in memory. Here the three nodes share \
         this machine's CPUs and disk with the programs.",
        if goal_ratio <= GOAL { "met" } else { "not met" },
        floor[0].p50_ms,
        floor[1].p50_ms,
    );
    let mut cascade_rows = Vec::new();
    for concurrency in CASCADE_CONCURRENCY {
        let mut cells = Vec::new();
        for queue_type in TYPES {
            cells.push(cascade(&cluster, queue_type, concurrency).await);
        }
        cascade_rows.push(row("image, 8 -> 12 -> 16", concurrency, &cells));
    }
    let header = "| x | concurrency | classic p50 ms | classic req/s | quorum p50 ms | quorum req/s | p50 ratio quorum/classic | req/s ratio quorum/classic |\n\
                  |---|---|---|---|---|---|---|---|";
    let section = format!(
        "## Classic against quorum queues (private three-node cluster)\n\n\
         The same measurements with `--queue-type classic` (the queue on one node) and `--queue-type quorum` \
         (replicated on three nodes; a publisher confirm means a majority holds the message), in one run on one \
         private RabbitMQ cluster on this machine; each program on a node of its own. Closed loop; each cell the \
         median of {REPEATS} runs of {} s after {} ms warm-up (range); ratios divide medians.\n\n\
         ### One transmission-unit hop (instant worker)\n\n{header}\n{}\n\n{goal}\n\n\
         ### The cascade (release units, random weights, one libtorch thread each, every sample to exit 16)\n\n\
         {header}\n{}\n",
        MEASURE.as_secs(),
        WARMUP.as_millis(),
        hop_rows.join("\n"),
        cascade_rows.join("\n")
    );
    let out = std::env::var("DNET_BENCH_OUT").unwrap_or_else(|_| "bench-out/quorum.md".to_owned());
    if let Some(parent) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(parent).expect("output folder");
    }
    std::fs::write(&out, &section).expect("write the benchmark section");
    println!("{section}");
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .expect("cluster stopped");
}

/// One table row: classic and quorum cells, and their ratios.
fn row(label: &str, concurrency: usize, cells: &[Stats]) -> String {
    let (classic, quorum) = (&cells[0], &cells[1]);
    eprintln!(
        "{label} c={concurrency}: classic p50 {:.3} ms, quorum p50 {:.3} ms",
        classic.p50_ms, quorum.p50_ms
    );
    format!(
        "| {label} | {concurrency} | {:.3} | {:.0} | {:.3} | {:.0} | {:.2} | {:.2} |",
        classic.p50_ms,
        classic.rps,
        quorum.p50_ms,
        quorum.rps,
        quorum.p50_ms.median / classic.p50_ms.median,
        quorum.rps.median / classic.rps.median
    )
}

/// A transmission unit on node 0 and an instant worker on node 1.
async fn hop(cluster: &PrivateCluster, queue_type: QueueType, size: usize, concurrency: usize) -> Stats {
    let queue = format!("dnet-bench-{}", uuid_like());
    let worker = Worker::start_on(cluster.node(1).broker(), &queue, contract(queue_type), 64, |_| {
        Behaviour::Reply(success(16, vec![0; 200]))
    })
    .await;
    let uris = cluster.uris_from(0);
    let unit = TransmissionUnit::start(
        cluster.node(0).broker(),
        &queue,
        &["-a", &uris, "--queue-type", queue_type.as_str()],
    )
    .await
    .expect("the release transmission unit starts");
    let client = client(&unit).await;
    let request = ComputationRequest {
        start_layer: 0,
        x: vec![7; size].into(),
        ..ComputationRequest::default()
    };
    let stats = measure(concurrency, move || {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            client.compute(request).await.expect("hop answer");
        }
    })
    .await;
    drop(unit);
    worker.stop().await;
    let _ = cluster.node(0).broker().delete_queue(&queue);
    stats
}

/// The broker's own RPC, no DNet program: a lapin client on node 0 publishes
/// with confirm to the queue (the same instant worker on node 1 answers) and
/// waits for the reply on its exclusive reply queue. Concurrency 1.
async fn bare_rpc(cluster: &PrivateCluster, queue_type: QueueType, size: usize) -> Stats {
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let queue = format!("dnet-bench-{}", uuid_like());
    let worker = Worker::start_on(cluster.node(1).broker(), &queue, contract(queue_type), 64, |_| {
        Behaviour::Reply(success(16, vec![0; 200]))
    })
    .await;
    let connection = Connection::connect(&cluster.node(0).broker().uri, ConnectionProperties::default())
        .await
        .expect("connect to node 0");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let reply_queue = channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await
        .expect("reply queue");
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let replies = channel
        .basic_consume(reply_queue.name().clone(), "".into(), no_ack, FieldTable::default())
        .await
        .expect("consume replies");
    let replies = std::sync::Arc::new(tokio::sync::Mutex::new(replies));
    let reply_to = reply_queue.name().to_string();
    let routing_key = queue.clone();
    let body = ComputationRequest {
        start_layer: 0,
        x: vec![7; size].into(),
        ..ComputationRequest::default()
    }
    .encode_to_vec();
    let stats = measure(1, move || {
        let (channel, replies, body, queue) = (channel.clone(), replies.clone(), body.clone(), routing_key.clone());
        let reply_to = reply_to.clone();
        async move {
            let properties = BasicProperties::default()
                .with_reply_to(reply_to.into())
                .with_correlation_id("bare".into());
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .expect("publish");
            let mut replies = replies.lock().await;
            let (confirmed, reply) = tokio::join!(confirm, replies.next());
            confirmed.expect("confirmed");
            reply.expect("a reply").expect("a delivery");
        }
    })
    .await;
    let _ = connection.close(200, "bench done".into()).await;
    worker.stop().await;
    let _ = cluster.node(0).broker().delete_queue(&queue);
    stats
}

/// The cascade 8 -> 12 -> 16, each program on a node of its own.
async fn cascade(cluster: &PrivateCluster, queue_type: QueueType, concurrency: usize) -> Stats {
    let tag = uuid_like();
    let never = vec!["1"; 15].join(",");
    let mut fronts: Vec<TransmissionUnit> = Vec::new();
    let mut workers = Vec::new();
    let mut queues = Vec::new();
    for (exit, front_on, worker_on) in [(16_u8, 2, 0), (12, 1, 2), (8, 0, 1)] {
        let queue = format!("dnet-bench-{tag}-{exit}");
        let uris = cluster.uris_from(worker_on);
        workers.push(
            ComputationUnit::start(
                cluster.node(0).broker(),
                &queue,
                exit,
                1,
                &["-a", &uris, "--queue-type", queue_type.as_str(), "--thresholds", &never],
            )
            .await
            .expect("worker starts"),
        );
        let uris = cluster.uris_from(front_on);
        let next = fronts.last().map(TransmissionUnit::endpoint);
        let mut flags = vec!["-a", uris.as_str(), "--queue-type", queue_type.as_str()];
        if let Some(next) = &next {
            flags.extend(["-n", next.as_str()]);
        }
        fronts.push(
            TransmissionUnit::start(cluster.node(0).broker(), &queue, &flags)
                .await
                .expect("transmission unit starts"),
        );
        queues.push(queue);
    }
    let client = client(fronts.last().expect("unit 8")).await;
    let request = ComputationRequest {
        start_layer: 0,
        x: image().into(),
        ..ComputationRequest::default()
    };
    let stats = measure(concurrency, move || {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            client.compute(request).await.expect("cascade answer");
        }
    })
    .await;
    drop(fronts);
    drop(workers);
    for queue in queues {
        let _ = cluster.node(0).broker().delete_queue(&queue);
    }
    stats
}

async fn client(unit: &TransmissionUnit) -> DNetClient<tonic::transport::Channel> {
    DNetClient::connect(format!("http://{}", unit.address))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
}

/// One image as a request's safetensors `x` (zeros: the cost is the same).
fn image() -> Vec<u8> {
    let bytes = vec![0u8; 3 * 32 * 32 * 4];
    let view = TensorView::new(Dtype::F32, vec![1, 3, 32, 32], &bytes).expect("a view");
    safetensors::serialize([("x", view)], None).expect("serialize")
}

/// A name part no other run uses.
fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}
