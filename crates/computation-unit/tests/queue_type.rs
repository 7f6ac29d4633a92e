//! `--queue-type quorum`: both programs declare a replicated queue, calls
//! are answered through it, deadlines still expire messages in it (the
//! broker's own count), and programs that disagree on the type stop at
//! start naming both settings. On the machine's broker (a quorum queue on
//! one node behaves as on a cluster here); the cluster is `cluster.rs`'s.

mod support;

use std::time::Duration;

use dnet_proto::StatusCode;
use dnet_testkit::{wait_for, Broker, ComputationUnit, TestQueue, TransmissionUnit};
use support::{images, request, thresholds};
use tonic::Code;

const SEED: u64 = 3;
/// How long a test waits for a state it needs before it fails.
const PATIENCE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_answers_and_expires_by_deadline() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let quorum = ["--queue-type", "quorum"];
    let unit = TransmissionUnit::start(&broker, queue.name(), &quorum)
        .await
        .expect("transmission unit starts");
    // No worker yet: a call's message waits in the queue until its deadline.
    let mut client = unit.client().await.expect("client");
    let mut late = tonic::Request::new(request(0, &images(1, SEED)));
    late.set_timeout(Duration::from_secs(1));
    let status = client.compute(late).await.expect_err("nobody computes it");
    // The unit's answer, or the client's own deadline a hair before it.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // The broker drops it by its per-message expiration (its own count).
    wait_for("the expired message dropped by the broker", PATIENCE, || {
        let counts = broker.queue_counts(queue.name());
        async move { matches!(counts, Ok(Some((0, 0, 0)))).then_some(()) }
    })
    .await
    .expect("expired in the quorum queue");
    let listing = broker
        .rabbitmqctl(&["list_queues", "--quiet", "--no-table-headers", "name", "type"])
        .expect("list_queues");
    assert!(
        listing.contains(&format!("{}\tquorum", queue.name())),
        "declared as a quorum queue: {listing}"
    );

    let _worker = ComputationUnit::start(
        &broker,
        queue.name(),
        16,
        SEED,
        &["--queue-type", "quorum", "--thresholds", &thresholds(0.5)],
    )
    .await
    .expect("worker starts on the quorum queue");
    let answer = client
        .compute(request(0, &images(1, SEED)))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(answer.status, StatusCode::Success as i32);
    assert_eq!(answer.exit_layer, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_that_disagree_on_the_queue_type_stop_at_start_naming_both() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    // A classic queue, as the original declares it.
    let _unit = TransmissionUnit::start(&broker, queue.name(), &[])
        .await
        .expect("classic transmission unit starts");

    let mut worker = ComputationUnit::launch(&broker, queue.name(), 16, SEED, &["--queue-type", "quorum"])
        .await
        .expect("worker starts");
    let status = worker
        .process
        .wait_exit(PATIENCE)
        .await
        .expect("the worker stops by itself");
    assert!(!status.success(), "a configuration error: {status}");
    let log = worker.process.log();
    assert!(
        log.contains("--queue-type quorum") && log.contains("--queue-type classic"),
        "names both settings: {log}"
    );

    let mut other = TransmissionUnit::launch(&broker, queue.name(), &["--queue-type", "quorum"])
        .await
        .expect("unit serves gRPC");
    let status = other
        .process
        .wait_exit(PATIENCE)
        .await
        .expect("the unit stops by itself");
    assert!(!status.success(), "a configuration error: {status}");
    let log = other.process.log();
    assert!(
        log.contains("--queue-type quorum") && log.contains("--queue-type classic"),
        "names both settings: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_the_brokers_message_size_stops_naming_both() {
    // A broker whose largest message is 1 MiB; the worker's default is 48 MiB:
    // its replies could be refused (and its channel closed) by the broker.
    let node =
        tokio::task::spawn_blocking(|| dnet_testkit::PrivateBroker::start_with_config("max_message_size = 1048576"))
            .await
            .expect("task")
            .expect("private broker");
    let broker = node.broker().clone();
    let queue = TestQueue::new(&broker);
    let mut worker = ComputationUnit::launch(&broker, queue.name(), 16, SEED, &[])
        .await
        .expect("worker starts");
    let status = worker
        .process
        .wait_exit(PATIENCE)
        .await
        .expect("the worker stops by itself");
    assert!(!status.success(), "a configuration error: {status}");
    let log = worker.process.log();
    assert!(
        log.contains("--max-message-bytes 50331648") && log.contains("1048576"),
        "names both numbers: {log}"
    );
    let within = ["--max-message-bytes", "1048576", "--max-request-samples", "1"];
    let _within = ComputationUnit::start(&broker, queue.name(), 16, SEED, &within)
        .await
        .expect("within the limit the worker consumes");
    drop(_within);
    drop(queue);
    tokio::task::spawn_blocking(move || drop(node)).await.expect("stopped");
}
