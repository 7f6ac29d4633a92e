//! `chaos`: runs the fault scenarios against real processes on loopback and
//! prints, per scenario, requests sent, answered, errors by kind and lost
//! (sent - answered - clean errors), which must be 0. Exit status 1 otherwise.
//!
//! Layout: `processes` (units as child processes), `load` (callers and how a
//! call ended), `proxy` (a slow, cutting TCP link), `scenarios` (the faults).

mod load;
mod processes;
mod proxy;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Fault injection against a DNet cascade on loopback (needs a local RabbitMQ
/// and `rabbitmqctl`: one scenario restarts the broker).
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.seconds.max(6));
    let rows = scenarios::run_all(&args.bin_dir, duration).await?;
    let table = scenarios::table(&rows, duration);
    println!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table)?;
    }
    let lost: u64 = rows.iter().map(|r| r.tally.lost).sum();
    if lost > 0 {
        eprintln!("{lost} requests lost");
        std::process::exit(1);
    }
    Ok(())
}
