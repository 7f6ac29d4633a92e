//! The five fault scenarios. Each starts its own processes on fresh queues,
//! runs callers for the whole duration, injects its fault at one third (and
//! repairs it at two thirds where it has a repair), and reports a row.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::load::{self, Tally};
use crate::processes::{free_port, metric, rabbitmqctl, wait_ready, Launcher};
use crate::proxy;

const CALLERS: usize = 4;

/// One scenario's outcome.
pub struct Row {
    pub name: &'static str,
    pub tally: Tally,
    pub note: String,
}

fn queue(name: &str) -> String {
    format!("dnet-chaos-{name}-{}", std::process::id())
}

/// Runs every scenario in turn.
///
/// # Errors
/// A unit that does not start, or the broker that does not come back.
pub async fn run_all(bin_dir: &Path, duration: Duration) -> anyhow::Result<Vec<Row>> {
    let mut launcher = Launcher::new(bin_dir)?;
    eprintln!("[chaos] logs in {}", launcher.logs.display());
    let rows = vec![
        kill_a_worker(&mut launcher, duration).await?,
        restart_the_broker(&mut launcher, duration).await?,
        restart_the_next_unit(&mut launcher, duration).await?,
        slow_cutting_link(&mut launcher, duration).await?,
        stall_a_worker(&mut launcher, duration).await?,
    ];
    for name in ["kill", "broker", "first", "second", "slow1", "slow2", "stall"] {
        let _ = rabbitmqctl(&["delete_queue", &queue(name)]).await;
    }
    Ok(rows)
}

/// 1. kill -9 of one of two workers on a queue under load.
async fn kill_a_worker(launcher: &mut Launcher, duration: Duration) -> anyhow::Result<Row> {
    eprintln!("[chaos] 1/5 kill -9 one of two workers");
    let (q, port) = (queue("kill"), free_port());
    let _unit = launcher.transmission_unit(port, &q, None, None)?;
    let mut doomed = launcher.computation_unit(&q, 4, true)?;
    let _survivor = launcher.computation_unit(&q, 4, true)?;
    let address = format!("127.0.0.1:{port}");
    wait_ready(&address, 2).await?;
    let (tally, ()) = tokio::join!(load::run(&address, CALLERS, duration, Duration::from_secs(5)), async {
        tokio::time::sleep(duration / 3).await;
        doomed.kill9();
    });
    Ok(Row {
        name: "kill -9 one of two workers",
        tally,
        note: "the broker redelivers its unacked request".into(),
    })
}

/// 2. The broker restarted under load.
async fn restart_the_broker(launcher: &mut Launcher, duration: Duration) -> anyhow::Result<Row> {
    eprintln!("[chaos] 2/5 restart RabbitMQ");
    let (q, port) = (queue("broker"), free_port());
    let _unit = launcher.transmission_unit(port, &q, None, None)?;
    let _worker = launcher.computation_unit(&q, 4, true)?;
    let address = format!("127.0.0.1:{port}");
    wait_ready(&address, 1).await?;
    let fault = async {
        tokio::time::sleep(duration / 3).await;
        let stopped = rabbitmqctl(&["stop_app"]).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Always bring the broker back, whatever happened before.
        let started = rabbitmqctl(&["start_app"]).await;
        stopped.and(started).map(|()| Instant::now())
    };
    // Longer load: stopping and starting RabbitMQ takes seconds, and recovery is measured after.
    let load_time = duration + Duration::from_secs(10);
    let (tally, back) = tokio::join!(load::run(&address, CALLERS, load_time, Duration::from_secs(5)), fault);
    let back = back?;
    let note = match tally.recovery_after(back) {
        Some(s) => format!("first answer {s:.1} s after the broker was back"),
        None => "no answer after the broker was back".into(),
    };
    Ok(Row {
        name: "RabbitMQ restarted",
        tally,
        note,
    })
}

/// 3. The next unit killed and restarted under load.
async fn restart_the_next_unit(launcher: &mut Launcher, duration: Duration) -> anyhow::Result<Row> {
    eprintln!("[chaos] 3/5 kill and restart the next unit");
    let (q1, q2) = (queue("first"), queue("second"));
    let (p1, p2) = (free_port(), free_port());
    let next = format!("127.0.0.1:{p2}");
    let _first = launcher.transmission_unit(p1, &q1, Some(&next), None)?;
    let mut second = launcher.transmission_unit(p2, &q2, None, None)?;
    let _w1 = launcher.computation_unit(&q1, 2, false)?;
    let _w2 = launcher.computation_unit(&q2, 4, true)?;
    let address = format!("127.0.0.1:{p1}");
    wait_ready(&address, 1).await?;
    wait_ready(&next, 1).await?;
    let fault = async {
        tokio::time::sleep(duration / 3).await;
        second.kill9();
        tokio::time::sleep(duration / 3).await;
        let restarted = launcher.transmission_unit(p2, &q2, None, None);
        (restarted, Instant::now())
    };
    let (tally, (restarted, back)) =
        tokio::join!(load::run(&address, CALLERS, duration, Duration::from_secs(5)), fault);
    let _second = restarted?;
    let note = match tally.recovery_after(back) {
        Some(s) => format!("first answer {s:.1} s after the restart"),
        None => "no answer after the restart".into(),
    };
    Ok(Row {
        name: "next unit killed and restarted",
        tally,
        note,
    })
}

/// 4. A slow link between units that also cuts connections.
async fn slow_cutting_link(launcher: &mut Launcher, duration: Duration) -> anyhow::Result<Row> {
    eprintln!("[chaos] 4/5 slow, cutting link between units");
    let (q1, q2) = (queue("slow1"), queue("slow2"));
    let (p1, p2) = (free_port(), free_port());
    let delay = Duration::from_millis(50);
    let proxy_port = proxy::start(format!("127.0.0.1:{p2}"), delay, Duration::from_millis(1500)).await?;
    let _first = launcher.transmission_unit(p1, &q1, Some(&format!("127.0.0.1:{proxy_port}")), None)?;
    let _second = launcher.transmission_unit(p2, &q2, None, None)?;
    let _w1 = launcher.computation_unit(&q1, 2, false)?;
    let _w2 = launcher.computation_unit(&q2, 4, true)?;
    let address = format!("127.0.0.1:{p1}");
    wait_ready(&address, 1).await?;
    wait_ready(&format!("127.0.0.1:{p2}"), 1).await?;
    let deadline = Duration::from_millis(800);
    let tally = load::run(&address, CALLERS, duration, deadline).await;
    let note = format!(
        "{} ms per chunk each way, cut every 1.5 s; deadline {} ms, slowest call ended {:.0} ms past it",
        delay.as_millis(),
        deadline.as_millis(),
        tally.max_over_deadline_ms.max(0.0)
    );
    Ok(Row {
        name: "slow link that cuts connections",
        tally,
        note,
    })
}

/// 5. A worker stalled (SIGSTOP) past the deadline.
async fn stall_a_worker(launcher: &mut Launcher, duration: Duration) -> anyhow::Result<Row> {
    eprintln!("[chaos] 5/5 SIGSTOP the worker past the deadline");
    let (q, port, metrics) = (queue("stall"), free_port(), free_port());
    let _unit = launcher.transmission_unit(port, &q, None, Some(metrics))?;
    let worker = launcher.computation_unit(&q, 4, true)?;
    let address = format!("127.0.0.1:{port}");
    wait_ready(&address, 1).await?;
    let (tally, ()) = tokio::join!(load::run(&address, CALLERS, duration, Duration::from_secs(1)), async {
        tokio::time::sleep(duration / 3).await;
        worker.signal("STOP");
        tokio::time::sleep(Duration::from_secs(3)).await;
        worker.signal("CONT");
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = metric(metrics, "dnet_late_replies_total").await;
    let note = format!("stalled 3 s with a 1 s deadline; {late:.0} late replies dropped, none answered twice");
    Ok(Row {
        name: "worker stalled (SIGSTOP)",
        tally,
        note,
    })
}

/// The Markdown table of all rows.
#[must_use]
pub fn table(rows: &[Row], duration: Duration) -> String {
    let mut out = "| scenario | sent | answered | errors by kind | lost | notes |
|---|---|---|---|---|---|
"
    .to_owned();
    for row in rows {
        let t = &row.tally;
        let errors: Vec<String> = t.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let errors = if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(", ")
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.name, t.sent, t.answered, errors, t.lost, row.note
        ));
    }
    out.push_str(&format!(
        "\n{CALLERS} closed-loop callers per scenario for {} s; lost = sent - answered - clean errors \
         (a call that hangs past its deadline + {} s, or ends without a result or an error message).\n",
        duration.as_secs(),
        load::GRACE.as_secs()
    ));
    out
}
