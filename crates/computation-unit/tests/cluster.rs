//! A cascade 8 -> 12 -> 16 on a private three-node RabbitMQ cluster with
//! quorum queues, each unit's two programs on different nodes, under
//! closed-loop load: a node killed (SIGKILL) under it loses no call and
//! changes no answer. The short version of `make chaos`'s cluster
//! scenarios: (a) the node leading a unit's queue, (b) the node a
//! transmission unit is on; each brought back before the next.
//!
//! Every answer is checked against `infer` 0 -> 16 of the same images in
//! one process; every call ends (answered or failed, none hangs past its
//! deadline); the broker's queues are empty at the end.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dnet_proto::DNetClient;
use dnet_proto::{ComputationRequest, StatusCode};
use dnet_testkit::cluster::NODE_BACK_WITHIN;
use dnet_testkit::{wait_for, ComputationUnit, PrivateCluster, TransmissionUnit};
use support::{images, infer, request, result_tensors, thresholds};
use tch::Tensor;

const SEED: u64 = 5;
/// Each call's deadline: long enough for a node's death and a leader's election.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Callers in the closed loop (the machine has 2 CPUs and three workers).
const CALLERS: usize = 3;
/// How long a test waits for a state it needs before it fails.
const PATIENCE: Duration = Duration::from_secs(120);
/// Answers after a kill before the next step: the cascade is answering again.
const ANSWERS_AFTER: usize = 10;

/// One unit: its transmission unit and worker (dropped in this order).
struct Unit {
    front: TransmissionUnit,
    _worker: ComputationUnit,
}

/// The answer of one call.
enum Outcome {
    Right,
    Wrong(String),
    Failed(tonic::Code, String),
}

#[derive(Default)]
struct Tally {
    outcomes: Mutex<Vec<(Instant, Outcome)>>,
}

impl Tally {
    fn answered_since(&self, since: Instant) -> usize {
        let outcomes = self.outcomes.lock().expect("tally");
        outcomes
            .iter()
            .filter(|(at, outcome)| *at > since && matches!(outcome, Outcome::Right))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_cascade_loses_no_call_when_nodes_die() {
    let cluster = tokio::task::spawn_blocking(|| PrivateCluster::start(3))
        .await
        .expect("join")
        .expect("a private three-node RabbitMQ cluster starts");
    let never = thresholds(1.0);
    // Units are started from the last; each program on another node than its partner.
    let last = unit(&cluster, 16, 2, 0, &never, None).await;
    let middle = unit(&cluster, 12, 1, 2, &never, Some(&last.front.endpoint())).await;
    let first = unit(&cluster, 8, 0, 1, &never, Some(&middle.front.endpoint())).await;

    let x = images(2, SEED);
    let dir = tempfile::tempdir().expect("temp dir");
    let reference = Arc::new(floats(&infer(dir.path(), &x, SEED, 0, 16)["probs"]));
    let x = Arc::new(request(0, &x));
    let client = first.front.client().await.expect("client");
    assert!(
        matches!(call(&client, &x, &reference).await, Outcome::Right),
        "a calm call is answered right"
    );

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (client, x, reference) = (client.clone(), Arc::clone(&x), Arc::clone(&reference));
            let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let outcome = call(&client, &x, &reference).await;
                    tally.outcomes.lock().expect("tally").push((Instant::now(), outcome));
                }
            })
        })
        .collect();
    wait_for_answers(&tally, Instant::now(), "load running").await;

    // (a) The node leading unit 12's queue.
    let queue12 = format!("dnet-cluster-{}-12", std::process::id());
    let leader = cluster.leader_of(&queue12).expect("unit 12's queue has a leader");
    kill_and_restore(&cluster, leader, &tally, "the leader of unit 12's queue").await;

    // (b) The node unit 8's transmission unit is on.
    let metrics = first.front.metrics().await.expect("metrics");
    let on = metrics
        .label_where("dnet_amqp_node", "node", 1.0)
        .expect("dnet_amqp_node names the node unit 8 is on");
    let node = cluster.index_of(&on).expect("a node of the cluster");
    kill_and_restore(&cluster, node, &tally, "the node unit 8's transmission unit is on").await;
    let metrics = first.front.metrics().await.expect("metrics");
    let now_on = metrics.label_where("dnet_amqp_node", "node", 1.0);
    assert!(
        now_on.as_deref().is_some_and(|n| n != on),
        "unit 8 moved to another node: {now_on:?}"
    );

    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        // A call that hung would fail at the client's own deadline, counted below.
        caller.await.expect("caller ends");
    }
    let outcomes = std::mem::take(&mut *tally.outcomes.lock().expect("tally"));
    let sent = outcomes.len();
    let right = outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Right)).count();
    let wrong: Vec<&String> = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Wrong(why) => Some(why),
            _ => None,
        })
        .collect();
    let failed: Vec<(tonic::Code, &String)> = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Failed(code, message) => Some((*code, message)),
            _ => None,
        })
        .collect();
    eprintln!(
        "sent {sent}, answered right {right}, wrong {}, failed {}: {failed:?}",
        wrong.len(),
        failed.len()
    );
    assert!(wrong.is_empty(), "every answer equals the model's: {wrong:?}");
    // The goal in make chaos is 0.5 %; this short run has few calls, so two
    // calls caught at the instant of a kill are allowed (a call whose reply
    // was lost with its node is published again within its deadline).
    let allowed = (sent / 200).max(2);
    assert!(
        failed.len() <= allowed,
        "at most {allowed} of {sent} calls failed while nodes died: {failed:?}"
    );

    // Nothing was left behind: every queue of the cascade is empty (the broker's own counts).
    for exit in [8, 12, 16] {
        let name = format!("dnet-cluster-{}-{exit}", std::process::id());
        wait_for(&format!("queue {name} empty"), PATIENCE, || async {
            let (broker, name) = (cluster.any_up().ok()?.clone(), name.clone());
            let counts = tokio::task::spawn_blocking(move || broker.queue_counts(&name))
                .await
                .ok()?;
            matches!(counts, Ok(Some((0, 0, _)))).then_some(())
        })
        .await
        .expect("queues drained");
    }
    drop((first, middle, last));
}

/// A unit of exit `exit`: its transmission unit on node `front_on` (and the
/// others after it), its worker on node `worker_on`; quorum queues.
async fn unit(
    cluster: &PrivateCluster,
    exit: u8,
    front_on: usize,
    worker_on: usize,
    thresholds: &str,
    next: Option<&str>,
) -> Unit {
    let queue = format!("dnet-cluster-{}-{exit}", std::process::id());
    let broker = cluster.node(0).broker();
    let worker_uris = cluster.uris_from(worker_on);
    let worker = ComputationUnit::start(
        broker,
        &queue,
        exit,
        SEED,
        &["-a", &worker_uris, "--queue-type", "quorum", "--thresholds", thresholds],
    )
    .await
    .expect("worker starts");
    let front_uris = cluster.uris_from(front_on);
    let deadline = format!("{}s", CALL_DEADLINE.as_secs());
    let mut flags = vec!["-a", &front_uris, "--queue-type", "quorum", "--timeout", &deadline];
    if let Some(next) = next {
        flags.extend(["-n", next]);
    }
    let front = TransmissionUnit::start(broker, &queue, &flags)
        .await
        .expect("transmission unit starts");
    Unit { front, _worker: worker }
}

/// One call through the cascade, checked against `reference` (exit 16's probabilities).
async fn call(client: &DNetClient<tonic::transport::Channel>, x: &ComputationRequest, reference: &[f32]) -> Outcome {
    let mut call = tonic::Request::new(x.clone());
    call.set_timeout(CALL_DEADLINE);
    let response = match client.clone().compute(call).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Outcome::Failed(status.code(), status.message().to_owned()),
    };
    if response.status != StatusCode::Success as i32 || response.exit_layer != 16 {
        return Outcome::Wrong(format!("status {} at exit {}", response.status, response.exit_layer));
    }
    let probs = floats(&result_tensors(&response)["probs"]);
    let error = probs
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0_f32, f32::max);
    if error > 1e-4 {
        return Outcome::Wrong(format!("probabilities differ from the model's by {error}"));
    }
    Outcome::Right
}

/// A tensor's values, flat.
fn floats(tensor: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(tensor.flatten(0, -1)).expect("f32 values")
}

/// Waits until `ANSWERS_AFTER` calls were answered right after `since`.
async fn wait_for_answers(tally: &Tally, since: Instant, what: &str) -> Duration {
    wait_for(what, PATIENCE, || async {
        (tally.answered_since(since) >= ANSWERS_AFTER).then_some(())
    })
    .await
    .expect("answers flow");
    since.elapsed()
}

/// Kills node `index` under load, waits until answers flow again, brings
/// the node back and waits until the cluster is whole.
async fn kill_and_restore(cluster: &PrivateCluster, index: usize, tally: &Tally, what: &str) {
    // As an operator does before stopping a node: every quorum queue keeps a
    // majority without it (a node restarted just before may still be catching
    // up; killing another then leaves a queue without a majority until it is).
    tokio::task::block_in_place(|| cluster.wait_until_not_critical(index, NODE_BACK_WITHIN))
        .expect("the node can be stopped without a queue losing its majority");
    let killed = Instant::now();
    cluster.node(index).kill().expect("kill -9 the node");
    let flowing = wait_for_answers(tally, killed, &format!("answers after killing {what}")).await;
    eprintln!("killed {what} (node {index}): {ANSWERS_AFTER} answers within {flowing:?}");
    let node = cluster.node(index);
    tokio::task::block_in_place(|| node.restart(NODE_BACK_WITHIN)).expect("the node comes back");
    tokio::task::block_in_place(|| cluster.wait_until_whole(NODE_BACK_WITHIN)).expect("the cluster is whole");
}
