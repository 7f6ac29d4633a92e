//! The broker cluster scenarios: a cascade 8 -> 12 -> 16 on a private
//! three-node RabbitMQ cluster with quorum queues, each unit's two programs
//! on different nodes (each given every node, its own first), under a paced
//! closed loop at about 70 % of the cascade's capacity; then (a) the node leading unit 12's
//! queue killed (SIGKILL), (b) the node unit 8's transmission unit is on
//! killed, (c) both nodes unit 12 uses, one after the other (the second
//! once stopping it leaves every quorum queue a majority), (d) the whole
//! cluster stopped and started. Every killed node is brought back, and the
//! cluster is whole again, before the next scenario. The machine's RabbitMQ
//! is never touched.

use std::time::{Duration, Instant};

use dnet_testkit::cluster::NODE_BACK_WITHIN;
use dnet_testkit::{ComputationUnit, PrivateCluster, TransmissionUnit};

use crate::bounds::Bounds;
use crate::counters;
use crate::faults::SEED;
use crate::load::{self, Tally};
use crate::report::{Ran, Row, CALLERS};
use crate::twice;

/// The exit that answers every call: units 8 and 12 hand every sample on.
pub const ANSWER_EXIT: u8 = 16;
/// Each call's deadline: a leader election and a reconnect fit in it.
const DEADLINE: Duration = Duration::from_secs(10);
/// The share of the capacity the scenarios load the cascade with.
const LOAD_SHARE: f64 = 0.7;
/// The longest answers may stop after a kill (and after the cluster's return).
const BACK_WITHIN: Duration = Duration::from_secs(10);
/// How long the load runs on once every node is back (at least).
const TAIL: Duration = Duration::from_secs(12);
/// The most calls a node's death may fail (the goal: 0.5 %).
const MAX_FAILED_SHARE: f64 = 0.005;

/// Which node each program of a unit is on first: (transmission unit, worker).
const PLACES: [(u8, usize, usize); 3] = [(8, 0, 1), (12, 1, 2), (16, 2, 0)];

/// The cascade of one scenario, on queues of its own.
struct Cascade {
    fronts: Vec<TransmissionUnit>,
    workers: Vec<ComputationUnit>,
    /// Queue names by exit.
    queues: Vec<(u8, String)>,
}

impl Cascade {
    async fn start(cluster: &PrivateCluster) -> anyhow::Result<Cascade> {
        let tag = uuid::Uuid::new_v4();
        let mut fronts: Vec<TransmissionUnit> = Vec::new();
        let mut workers = Vec::new();
        let mut queues = Vec::new();
        let broker = cluster.node(0).broker();
        for &(exit, front_on, worker_on) in PLACES.iter().rev() {
            let queue = format!("dnet-chaos-{tag}-{exit}");
            let thresholds = vec![if exit == ANSWER_EXIT { "0" } else { "1" }; 15].join(",");
            let uris = cluster.uris_from(worker_on);
            let worker = ComputationUnit::start_with_env(
                broker,
                &queue,
                exit,
                SEED,
                &[
                    "-a",
                    &uris,
                    "--queue-type",
                    "quorum",
                    "--prefetch",
                    "1",
                    "--thresholds",
                    &thresholds,
                ],
                &[twice::WORKER_LOG_FILTER],
            )
            .await?;
            let uris = cluster.uris_from(front_on);
            let deadline = format!("{}s", DEADLINE.as_secs());
            let next = fronts.last().map(TransmissionUnit::endpoint);
            let mut flags = vec!["-a", &uris, "--queue-type", "quorum", "--timeout", &deadline];
            if let Some(next) = &next {
                flags.extend(["-n", next]);
            }
            fronts.push(TransmissionUnit::start(broker, &queue, &flags).await?);
            workers.push(worker);
            queues.push((exit, queue));
        }
        fronts.reverse();
        workers.reverse();
        queues.reverse();
        Ok(Cascade {
            fronts,
            workers,
            queues,
        })
    }

    fn queue(&self, exit: u8) -> &str {
        self.queues
            .iter()
            .find(|(e, _)| *e == exit)
            .map_or("", |(_, q)| q.as_str())
    }

    /// The cluster node transmission unit `front` is on now.
    async fn node_of(&self, cluster: &PrivateCluster, front: usize) -> anyhow::Result<usize> {
        node_in(cluster, self.fronts[front].metrics().await?)
    }

    /// The cluster node worker `worker` is on now.
    async fn worker_node(&self, cluster: &PrivateCluster, worker: usize) -> anyhow::Result<usize> {
        node_in(cluster, self.workers[worker].metrics().await?)
    }

    /// Replies the workers computed (published or not) beyond one per
    /// unit per answered call: work done twice, or for calls that failed.
    async fn computed_beyond(&self, answered: u64) -> anyhow::Result<u64> {
        let published = counters::total("dnet_worker_replies_total", self.workers.iter().map(|w| w.metrics())).await?;
        let unpublished = counters::total(
            "dnet_worker_unpublished_replies_total",
            self.workers.iter().map(|w| w.metrics()),
        )
        .await?;
        Ok(((published + unpublished) as u64).saturating_sub(answered * self.workers.len() as u64))
    }
}

/// The cluster node a program's `dnet_amqp_node` names.
fn node_in(cluster: &PrivateCluster, metrics: dnet_testkit::Metrics) -> anyhow::Result<usize> {
    let node = metrics
        .label_where("dnet_amqp_node", "node", 1.0)
        .ok_or_else(|| anyhow::anyhow!("the program names no node"))?;
    cluster
        .index_of(&node)
        .ok_or_else(|| anyhow::anyhow!("{node} is not a node of the cluster"))
}

/// The faults, in the order they run.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// (a) kill -9 of the node leading unit 12's queue.
    Leader,
    /// (b) kill -9 of the node unit 8's transmission unit is on.
    FrontNode,
    /// (c) kill -9 of unit 12's transmission unit's node, then of its worker's.
    BothNodes,
    /// (d) every node stopped, then started.
    WholeCluster,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Leader => "cluster (a): node leading unit 12's queue killed",
            Fault::FrontNode => "cluster (b): node unit 8's transmission unit is on killed",
            Fault::BothNodes => "cluster (c): both nodes unit 12 uses killed, one after the other",
            Fault::WholeCluster => "cluster (d): whole cluster stopped and started",
        }
    }
}

/// Runs the four cluster scenarios on one cluster.
///
/// # Errors
/// The cluster or a program does not start, or a node does not come back.
pub async fn all(duration: Duration) -> anyhow::Result<Vec<Row>> {
    eprintln!("[chaos] starting a private three-node RabbitMQ cluster");
    let cluster = std::sync::Arc::new(tokio::task::spawn_blocking(|| PrivateCluster::start(3)).await??);
    let mut rows = Vec::new();
    for fault in [Fault::Leader, Fault::FrontNode, Fault::BothNodes, Fault::WholeCluster] {
        rows.push(scenario(&cluster, fault, duration).await?);
    }
    let cluster = std::sync::Arc::try_unwrap(cluster).map_err(|_| anyhow::anyhow!("cluster still shared"))?;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(rows)
}

/// One scenario: capacity measured, load at 70 % of it, the fault at a
/// third of the run, every node back before it ends.
async fn scenario(cluster: &std::sync::Arc<PrivateCluster>, fault: Fault, duration: Duration) -> anyhow::Result<Row> {
    eprintln!("[chaos] {}", fault.name());
    let cascade = Cascade::start(cluster).await?;
    let address = cascade.fronts[0].endpoint();
    let probe = Duration::from_secs(3);
    let capacity = load::closed_loop(&address, CALLERS, probe, DEADLINE, 1_000_000).await?;
    let rate = (LOAD_SHARE * capacity.answered as f64 / probe.as_secs_f64()).max(1.0);
    // The load runs until every node is back, and TAIL after.
    let (done, fault_done) = tokio::sync::oneshot::channel();
    let injected = async {
        let window = inject(cluster, &cascade, fault, duration / 3).await;
        let _ = done.send(());
        window
    };
    let stopped = std::sync::OnceLock::new();
    let until = async {
        let _ = fault_done.await;
        tokio::time::sleep(TAIL.max(duration / 3)).await;
        let _ = stopped.set(Instant::now());
    };
    let (tally, window) = tokio::join!(load::paced_loop(&address, CALLERS, rate, until, DEADLINE, 0), injected);
    let (tally, (began, ended)) = (tally?, window?);
    let stopped = stopped.get().copied().unwrap_or_else(Instant::now);
    // Every node back, the cluster whole, before the counts are read.
    let whole = std::sync::Arc::clone(cluster);
    tokio::task::spawn_blocking(move || whole.wait_until_whole(NODE_BACK_WITHIN)).await??;
    // The capacity probe's calls were computed by the same workers.
    let computed_beyond = cascade.computed_beyond(tally.answered + capacity.answered).await?;
    let gap = longest_gap(&tally, began, stopped);
    let longest_call = tally.latencies_ms.iter().copied().fold(0.0_f64, f64::max);
    let failed = tally.error_count();
    let flowing = match fault {
        Fault::WholeCluster => tally.recovery_note(ended, "the cluster was back"),
        _ => format!(
            "answers stopped for at most {:.2} s from the fault on",
            gap.as_secs_f64()
        ),
    };
    let note = format!(
        "{CALLERS} paced callers at {rate:.1}/s (70 % of {:.1}/s); longest call {:.2} s; {flowing}; \
         {computed_beyond} replies computed beyond one per unit per answered call",
        capacity.answered as f64 / probe.as_secs_f64(),
        longest_call / 1e3,
    );
    let units: Vec<&TransmissionUnit> = cascade.fronts.iter().collect();
    let workers: Vec<&ComputationUnit> = cascade.workers.iter().collect();
    let ran = Ran {
        units,
        workers,
        replaced_logs: Vec::new(),
    };
    let mut row = Row::of(fault.name(), tally, ANSWER_EXIT, ran, note).await?;
    match fault {
        Fault::WholeCluster => {
            let bounds = Bounds {
                min_answered: 0.3,
                // Calls sent while it was down fail at once (UNAVAILABLE);
                // one that waited out the outage in retries may end at its deadline.
                errors_allowed: &["Unavailable", "DeadlineExceeded"],
                max_recovery: Some(BACK_WITHIN),
            };
            let recovery = row.tally.recovery_after(ended);
            row = row.bounded(&bounds, recovery);
            row.errors_only_during(began, ended, BACK_WITHIN);
        }
        Fault::BothNodes => {
            // The second kill lands on a node that came back seconds before:
            // the queues it leads elect a leader again, which takes seconds,
            // and calls caught in it may end at their deadline.
            let bounds = Bounds {
                min_answered: 0.9,
                errors_allowed: &["Unavailable", "DeadlineExceeded"],
                max_recovery: None,
            };
            row = row.bounded(&bounds, None);
            row.bounds
                .push_str(&format!(", answers stop <= {:.0} s", BACK_WITHIN.as_secs_f64()));
            row.require(gap <= BACK_WITHIN, || {
                format!(
                    "answers stopped for {:.2} s, bound {:.0} s",
                    gap.as_secs_f64(),
                    BACK_WITHIN.as_secs_f64()
                )
            });
        }
        Fault::Leader | Fault::FrontNode => {
            let allowed = (MAX_FAILED_SHARE * row.tally.sent as f64).floor() as u64;
            let bounds = Bounds {
                min_answered: 1.0 - MAX_FAILED_SHARE,
                errors_allowed: &["Unavailable", "DeadlineExceeded"],
                max_recovery: None,
            };
            row = row.bounded(&bounds, None);
            row.bounds.push_str(&format!(
                ", at most {allowed} failed (0.5 %), answers stop <= {:.0} s",
                BACK_WITHIN.as_secs_f64()
            ));
            row.require(failed <= allowed, || format!("{failed} calls failed, bound {allowed}"));
            row.require(gap <= BACK_WITHIN, || {
                format!(
                    "answers stopped for {:.2} s, bound {:.0} s",
                    gap.as_secs_f64(),
                    BACK_WITHIN.as_secs_f64()
                )
            });
        }
    }
    drop(cascade);
    Ok(row)
}

/// Injects `fault` after `wait`; returns when it began and when the
/// cluster was back (every node it touched restarted).
async fn inject(
    cluster: &std::sync::Arc<PrivateCluster>,
    cascade: &Cascade,
    fault: Fault,
    wait: Duration,
) -> anyhow::Result<(Instant, Instant)> {
    tokio::time::sleep(wait).await;
    let began = Instant::now();
    match fault {
        Fault::Leader => {
            let leader = cluster.leader_of(cascade.queue(12))?;
            kill_for(cluster, leader, wait).await?;
        }
        Fault::FrontNode => {
            let node = cascade.node_of(cluster, 0).await?;
            kill_for(cluster, node, wait).await?;
        }
        Fault::BothNodes => {
            let front = cascade.node_of(cluster, 1).await?;
            kill_for(cluster, front, wait / 2).await?;
            let worker = cascade.worker_node(cluster, 1).await?;
            // As an operator does before stopping the next node: the one
            // that came back holds its replicas again.
            let waiting = std::sync::Arc::clone(cluster);
            tokio::task::spawn_blocking(move || waiting.wait_until_not_critical(worker, NODE_BACK_WITHIN)).await??;
            kill_for(cluster, worker, wait / 2).await?;
        }
        Fault::WholeCluster => {
            let every = std::sync::Arc::clone(cluster);
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                for index in 0..every.len() {
                    every.node(index).stop()?;
                }
                Ok(())
            })
            .await??;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let every = std::sync::Arc::clone(cluster);
            tokio::task::spawn_blocking(move || restart_all(&every)).await??;
        }
    }
    Ok((began, Instant::now()))
}

/// Kills node `index`, waits `down`, starts it again and waits until the cluster is whole.
async fn kill_for(cluster: &std::sync::Arc<PrivateCluster>, index: usize, down: Duration) -> anyhow::Result<()> {
    let node = std::sync::Arc::clone(cluster);
    tokio::task::spawn_blocking(move || node.node(index).kill()).await??;
    eprintln!("[chaos]   killed node {index}");
    tokio::time::sleep(down).await;
    let node = std::sync::Arc::clone(cluster);
    tokio::task::spawn_blocking(move || {
        node.node(index).restart(NODE_BACK_WITHIN)?;
        node.wait_until_whole(NODE_BACK_WITHIN)
    })
    .await??;
    eprintln!("[chaos]   node {index} back, cluster whole");
    Ok(())
}

/// Starts every node at once (each waits for the others to rejoin).
fn restart_all(cluster: &PrivateCluster) -> anyhow::Result<()> {
    std::thread::scope(|scope| {
        let started: Vec<_> = (0..cluster.len())
            .map(|index| scope.spawn(move || cluster.node(index).restart(NODE_BACK_WITHIN)))
            .collect();
        started
            .into_iter()
            .try_for_each(|handle| handle.join().map_err(|_| anyhow::anyhow!("a restart panicked"))?)
    })?;
    cluster.wait_until_whole(NODE_BACK_WITHIN)
}

/// The longest time without an answer between `since` and `until` (the
/// load's end): answers that never came back count to the end.
fn longest_gap(tally: &Tally, since: Instant, until: Instant) -> Duration {
    let mut times: Vec<Instant> = tally
        .answered_at
        .iter()
        .copied()
        .filter(|t| *t >= since && *t <= until)
        .collect();
    times.sort();
    times.push(until);
    let mut previous = since;
    let mut longest = Duration::ZERO;
    for at in times {
        longest = longest.max(at.duration_since(previous));
        previous = at;
    }
    longest
}
