//! The fault scenarios. Each starts its own processes on fresh queues, runs
//! callers for the whole duration, injects its fault at one third (and
//! repairs it at two thirds where it has a repair), and reports a row. The
//! broker restart happens on a private RabbitMQ node, never the machine's;
//! it and the next unit's restart run with retries off, then on.

use std::time::{Duration, Instant};

use dnet_testkit::{Broker, ComputationUnit, PrivateBroker, TestQueue, TransmissionUnit};

use crate::bounds::Bounds;
use crate::load;
use crate::proxy;
use crate::report::{Ran, Row, CALLERS};
use crate::twice;

/// Random weights of every worker (and of the reference that checks answers).
pub const SEED: u64 = 1;
/// Every scenario's answers come from this exit (exit 2 units never answer).
pub const ANSWER_EXIT: u8 = 4;

/// The longest a unit and its worker may take to answer again once the
/// broker is back: each reconnects after a backoff of up to 5 s
/// (`dnet-amqp`'s MAX_BACKOFF, full jitter), one after the other at worst.
const BROKER_RECOVERY: Duration = Duration::from_secs(12);

/// `--retry-budget` of the transmission units: off, or the default.
fn retry_flags(retries: bool) -> &'static [&'static str] {
    if retries {
        &[]
    } else {
        &["--retry-budget", "0"]
    }
}

fn with_retries(name: &str, retries: bool) -> String {
    format!("{name} (retries {})", if retries { "on" } else { "off" })
}

/// A worker of `exit` on `queue`: it answers every request when `answers`,
/// otherwise it hands every request on.
pub async fn worker(broker: &Broker, queue: &TestQueue, exit: u8, answers: bool) -> anyhow::Result<ComputationUnit> {
    let thresholds = vec![if answers { "0" } else { "1" }; 15].join(",");
    ComputationUnit::start_with_env(
        broker,
        queue.name(),
        exit,
        SEED,
        &["--prefetch", "1", "--thresholds", &thresholds],
        &[twice::WORKER_LOG_FILTER],
    )
    .await
}

pub async fn unit(broker: &Broker, queue: &TestQueue, extra: &[&str]) -> anyhow::Result<TransmissionUnit> {
    let mut args = vec!["--timeout", "10s"];
    args.extend_from_slice(extra);
    TransmissionUnit::start(broker, queue.name(), &args).await
}

/// Runs every fault scenario in turn.
///
/// # Errors
/// A unit that does not start, metrics that cannot be read, or a broker that
/// does not come back.
pub async fn all(broker: &Broker, duration: Duration) -> anyhow::Result<Vec<Row>> {
    let mut rows = vec![kill_a_worker(broker, duration).await?];
    for retries in [false, true] {
        rows.push(restart_the_broker(duration, retries).await?);
        rows.push(restart_the_next_unit(broker, duration, retries).await?);
    }
    rows.push(slow_cutting_link(broker, duration).await?);
    rows.push(stall_a_worker(broker, duration).await?);
    Ok(rows)
}

/// 1. kill -9 of one of two workers on a queue under load.
async fn kill_a_worker(broker: &Broker, duration: Duration) -> anyhow::Result<Row> {
    eprintln!("[chaos] kill -9 one of two workers");
    let queue = TestQueue::new(broker);
    let unit = unit(broker, &queue, &[]).await?;
    let (doomed, survivor) = futures::future::join(
        worker(broker, &queue, ANSWER_EXIT, true),
        worker(broker, &queue, ANSWER_EXIT, true),
    )
    .await;
    let (mut doomed, survivor) = (doomed?, survivor?);
    unit.wait_for_consumers(2).await?;
    let address = unit.endpoint();
    let (tally, ()) = tokio::join!(
        load::closed_loop(&address, CALLERS, duration, Duration::from_secs(5), 0),
        async {
            tokio::time::sleep(duration / 3).await;
            doomed.process.kill();
        }
    );
    // The killed worker has no metrics left: what counts is what the survivor
    // received; its log still says what it answered before it died.
    let ran = Ran {
        units: vec![&unit],
        workers: vec![&survivor],
        replaced_logs: vec![doomed.process.log()],
    };
    let mut row = Row::of("kill -9 one of two workers", tally?, ANSWER_EXIT, ran, String::new())
        .await?
        .bounded(
            &Bounds {
                min_answered: 0.99,
                errors_allowed: &[],
                max_recovery: None,
            },
            None,
        );
    row.note = format!(
        "{} request(s) the killed worker held were redelivered to the survivor",
        row.redelivered
    );
    Ok(row)
}

/// 2. The broker restarted under load (a private node: the machine's broker is shared).
async fn restart_the_broker(duration: Duration, retries: bool) -> anyhow::Result<Row> {
    let name = with_retries("RabbitMQ restarted", retries);
    eprintln!("[chaos] {name} (a private node)");
    let node = tokio::task::spawn_blocking(PrivateBroker::start).await??;
    let broker = node.broker().clone();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, retry_flags(retries)).await?;
    let worker = worker(&broker, &queue, ANSWER_EXIT, true).await?;
    let address = unit.endpoint();
    let node = std::sync::Arc::new(node);
    let fault = {
        let node = std::sync::Arc::clone(&node);
        async move {
            tokio::time::sleep(duration / 3).await;
            let began = Instant::now();
            let stopping = std::sync::Arc::clone(&node);
            let stopped = tokio::task::spawn_blocking(move || stopping.stop_app()).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            // Always bring the broker back, whatever happened before.
            let starting = std::sync::Arc::clone(&node);
            let started = tokio::task::spawn_blocking(move || starting.start_app()).await;
            stopped??;
            started??;
            anyhow::Ok((began, Instant::now()))
        }
    };
    // Longer load: stopping and starting RabbitMQ takes seconds, and recovery is measured after.
    let load_time = duration + Duration::from_secs(10);
    let (tally, back) = tokio::join!(
        load::closed_loop(&address, CALLERS, load_time, Duration::from_secs(5), 0),
        fault
    );
    let (tally, (began, back)) = (tally?, back?);
    let note = tally.recovery_note(back, "the broker was back");
    let recovery = tally.recovery_after(back);
    // With retries, calls wait for the broker rather than fail.
    let bounds = Bounds {
        min_answered: if retries { 0.9 } else { 0.5 },
        errors_allowed: &["Unavailable"],
        max_recovery: Some(BROKER_RECOVERY),
    };
    let mut row = Row::of(&name, tally, ANSWER_EXIT, Ran::one(&unit, &worker), note)
        .await?
        .bounded(&bounds, recovery);
    row.errors_only_during(began, back, bounds.max_recovery.unwrap_or_default());
    drop((worker, unit, queue));
    Ok(row)
}

/// 3. The next unit killed and restarted under load.
async fn restart_the_next_unit(broker: &Broker, duration: Duration, retries: bool) -> anyhow::Result<Row> {
    let name = with_retries("next unit killed and restarted", retries);
    eprintln!("[chaos] {name}");
    let (q1, q2) = (TestQueue::new(broker), TestQueue::new(broker));
    let next = format!("127.0.0.1:{}", dnet_testkit::free_port());
    let mut second = unit(broker, &q2, &["-l", &next]).await?;
    let mut flags = vec!["-n", next.as_str()];
    flags.extend_from_slice(retry_flags(retries));
    let first = unit(broker, &q1, &flags).await?;
    let (w1, w2) = futures::future::join(worker(broker, &q1, 2, false), worker(broker, &q2, ANSWER_EXIT, true)).await;
    let (w1, w2) = (w1?, w2?);
    let address = first.endpoint();
    let fault = async {
        tokio::time::sleep(duration / 3).await;
        let began = Instant::now();
        second.process.kill();
        tokio::time::sleep(duration / 3).await;
        let restarted = unit(broker, &q2, &["-l", &next]).await;
        (restarted, began, Instant::now())
    };
    let (tally, (restarted, began, back)) = tokio::join!(
        load::closed_loop(&address, CALLERS, duration, Duration::from_secs(5), 0),
        fault
    );
    let (tally, second) = (tally?, restarted?);
    let note = tally.recovery_note(back, "the restart");
    let recovery = tally.recovery_after(back);
    let ran = Ran {
        units: vec![&first, &second],
        workers: vec![&w1, &w2],
        replaced_logs: Vec::new(),
    };
    // Down for a third of the run: the calls meanwhile fail at once (each
    // caller pauses 50 ms after an error), so the share answered depends on
    // how fast the unit answers otherwise; what must hold is that errors
    // come only while it is down.
    let bounds = Bounds {
        min_answered: 0.3,
        errors_allowed: &["Unavailable"],
        max_recovery: Some(Duration::from_secs(2)),
    };
    let mut row = Row::of(&name, tally, ANSWER_EXIT, ran, note)
        .await?
        .bounded(&bounds, recovery);
    row.errors_only_during(began, back, Duration::from_secs(2));
    Ok(row)
}

/// 4. A slow link between units that also cuts connections.
async fn slow_cutting_link(broker: &Broker, duration: Duration) -> anyhow::Result<Row> {
    eprintln!("[chaos] slow, cutting link between units");
    let (q1, q2) = (TestQueue::new(broker), TestQueue::new(broker));
    let second = unit(broker, &q2, &[]).await?;
    let delay = Duration::from_millis(50);
    let proxy_port = proxy::start(second.endpoint(), delay, Duration::from_millis(1500)).await?;
    let first = unit(broker, &q1, &["-n", &format!("127.0.0.1:{proxy_port}")]).await?;
    let (w1, w2) = futures::future::join(worker(broker, &q1, 2, false), worker(broker, &q2, ANSWER_EXIT, true)).await;
    let (w1, w2) = (w1?, w2?);
    let deadline = Duration::from_millis(800);
    let tally = load::closed_loop(&first.endpoint(), CALLERS, duration, deadline, 0).await?;
    let note = format!(
        "{} ms per chunk each way, cut every 1.5 s; deadline {} ms, slowest call ended {:.0} ms past it",
        delay.as_millis(),
        deadline.as_millis(),
        tally.max_over_deadline_ms.max(0.0)
    );
    let ran = Ran {
        units: vec![&first, &second],
        workers: vec![&w1, &w2],
        replaced_logs: Vec::new(),
    };
    let bounds = Bounds {
        min_answered: 0.5,
        errors_allowed: &["Unavailable", "DeadlineExceeded"],
        max_recovery: None,
    };
    Ok(
        Row::of("slow link that cuts connections", tally, ANSWER_EXIT, ran, note)
            .await?
            .bounded(&bounds, None),
    )
}

/// 5. A worker stalled (SIGSTOP) past the deadline.
async fn stall_a_worker(broker: &Broker, duration: Duration) -> anyhow::Result<Row> {
    eprintln!("[chaos] SIGSTOP the worker past the deadline");
    let queue = TestQueue::new(broker);
    let unit = unit(broker, &queue, &[]).await?;
    let worker = worker(broker, &queue, ANSWER_EXIT, true).await?;
    let address = unit.endpoint();
    let (tally, resumed) = tokio::join!(
        load::closed_loop(&address, CALLERS, duration, Duration::from_secs(1), 0),
        async {
            tokio::time::sleep(duration / 3).await;
            let began = Instant::now();
            worker.process.signal("STOP")?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            worker.process.signal("CONT")?;
            anyhow::Ok((began, Instant::now()))
        }
    );
    let (tally, (began, resumed)) = (tally?, resumed?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recovery = tally.recovery_after(resumed);
    let bounds = Bounds {
        min_answered: 0.9,
        errors_allowed: &["DeadlineExceeded"],
        max_recovery: Some(Duration::from_secs(1)),
    };
    let mut row = Row::of(
        "worker stalled (SIGSTOP)",
        tally,
        ANSWER_EXIT,
        Ran::one(&unit, &worker),
        "stalled 3 s with a 1 s deadline".into(),
    )
    .await?
    .bounded(&bounds, recovery);
    // A call sent just before it resumed ends at its deadline, 1 s later.
    row.errors_only_during(began, resumed, Duration::from_secs(2));
    Ok(row)
}
