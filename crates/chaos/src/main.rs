//! `chaos`: runs the fault scenarios against real processes on loopback and
//! prints, per scenario, requests sent, answered, answers checked against the
//! model (wrong), work done twice (computed again, late replies), errors by
//! kind and rate, lost (sent - answered - clean errors) and redeliveries.
//! Exit status 1 when anything was lost or wrong, or a scenario broke its
//! bounds (`bounds`: the share answered, the errors its fault may cause,
//! the recovery after it, and the checks a scenario makes itself).
//!
//! Layout: `load` (callers in closed and open loop, how a call ended),
//! `verify` (every answer against the model), `proxy` (a slow, cutting TCP
//! link), `faults` (processes and links failing), `overload` (overload, a
//! stall then a burst, a poison request), `cpus` (the overload's worker on a
//! CPU of its own), `twice` (work done twice), `flood` (large calls against
//! a stalled unit), `cluster` (nodes of a RabbitMQ cluster killed under a
//! cascade on quorum queues), `counters` (counters summed over programs), `report`
//! (rows and the table).
//! Processes, queues and the private broker come from `dnet-testkit`.

mod bounds;
mod cluster;
mod counters;
mod cpus;
mod faults;
mod flood;
mod load;
mod overload;
mod proxy;
mod report;
mod twice;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Fault injection against DNet units on loopback (needs the local RabbitMQ
/// and `rabbitmq-server`/`rabbitmqctl`: the broker restart runs on a private
/// node the suite starts and stops; the machine's broker is never restarted).
#[derive(Debug, Parser)]
#[command(name = "chaos", version, about)]
struct Args {
    /// Folder with the release binaries transmission-unit and computation-unit.
    #[arg(long, env = "DNET_BIN_DIR", default_value = "target/release")]
    bin_dir: PathBuf,

    /// Seconds of load per scenario (faults at one third and two thirds).
    #[arg(long, default_value_t = 18)]
    seconds: u64,

    /// Write the table as Markdown to this file.
    #[arg(long)]
    out: Option<PathBuf>,

    /// Keep every process's log in this folder [default: a new folder in /tmp].
    #[arg(long)]
    logs: Option<PathBuf>,

    /// Run only these groups of scenarios (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Group>,
}

/// The groups of scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    /// Processes and links failing under load.
    Faults,
    /// Overload, a stall then a burst, a poison request.
    Overload,
    /// Large calls against a stalled unit.
    Flood,
    /// Nodes of a private three-node RabbitMQ cluster killed under a quorum-queue cascade.
    Cluster,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.seconds.max(6));
    dnet_testkit::programs::use_bin_dir(args.bin_dir.clone());
    let logs = args
        .logs
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("dnet-chaos-{}", std::process::id())));
    eprintln!("[chaos] logs in {}", logs.display());
    dnet_testkit::process::keep_logs_in(logs);
    let broker = dnet_testkit::Broker::local();
    let runs = |group| args.only.is_empty() || args.only.contains(&group);
    let mut rows = Vec::new();
    if runs(Group::Faults) {
        rows.extend(faults::all(&broker, duration).await?);
    }
    if runs(Group::Overload) {
        rows.extend(overload::all(&broker, duration).await?);
    }
    if runs(Group::Flood) {
        rows.push(flood::flood_a_stalled_unit(&broker).await?);
    }
    if runs(Group::Cluster) {
        rows.extend(cluster::all(duration).await?);
    }
    for row in &mut rows {
        let reference = verify::Reference::new(faults::SEED, usize::from(row.answer_exit))?;
        row.check = reference.check(&row.tally)?;
    }
    let table = report::table(&rows, duration);
    println!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table)?;
    }
    let bad: u64 = rows.iter().map(|r| r.tally.lost + r.check.wrong).sum();
    let broken: Vec<String> = rows
        .iter()
        .flat_map(|r| r.failures.iter().map(move |f| format!("{}: {f}", r.name)))
        .collect();
    if bad > 0 || !broken.is_empty() {
        eprintln!("[chaos] FAILED: {bad} requests lost or answered wrongly; broken: {broken:?}");
        std::process::exit(1);
    }
    Ok(())
}
