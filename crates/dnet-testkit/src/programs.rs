//! The transmission unit and the computation unit as processes, started
//! from the built binaries with JSON logs, and ready when their logs say so.
//!
//! Ports: each program binds port 0 and the kit reads the bound address from
//! its log, so parallel tests never race for a port. A test that must fix a
//! port (to restart a unit on it) passes `-l` itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use dnet_proto::DNetClient;
use serde_json::Value;
use tonic::transport::Channel;

use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::process::Process;

/// How long a program may take to say it is ready (a worker loads its model first).
const READY_WITHIN: Duration = Duration::from_secs(90);

/// The binaries' folder when a program chose it ([`use_bin_dir`]).
static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Starts later programs from `dir` (the chaos suite's `--bin-dir`).
pub fn use_bin_dir(dir: PathBuf) {
    let _ = BIN_DIR.set(dir);
}

/// The folder of the workspace's binaries: the one given to [`use_bin_dir`],
/// else `DNET_TEST_BIN_DIR`, else the folder of the running executable
/// (`target/<profile>/deps/` of tests and benches resolves to `target/<profile>/`).
#[must_use]
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = BIN_DIR.get() {
        return dir.clone();
    }
    if let Ok(dir) = std::env::var("DNET_TEST_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().map(PathBuf::from).unwrap_or(dir)
    } else {
        dir
    }
}

/// The path of a workspace binary in `bin_dir`.
///
/// # Errors
/// It has not been built.
pub fn binary(bin_dir: &std::path::Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir.join(name);
    if !path.exists() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` (cargo test --workspace builds it)",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `computation-unit infer` with random weights `seed` and one thread,
/// from `start` to `exit`, on the safetensors `input`, writing `output`.
///
/// # Errors
/// The program is not built, cannot run, or fails.
pub fn infer(input: &Path, output: &Path, seed: u64, start: usize, exit: usize) -> anyhow::Result<()> {
    let status = std::process::Command::new(binary(&bin_dir(), "computation-unit")?)
        .args(["infer", "--random-weights", &seed.to_string(), "--threads", "1"])
        .args(["--start-layer", &start.to_string(), "--exit-layer", &exit.to_string()])
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .status()?;
    if !status.success() {
        bail!(
            "computation-unit infer {start}->{exit} on {} failed: {status}",
            input.display()
        );
    }
    Ok(())
}

/// `defaults` followed by `extra`, leaving out each default flag that `extra` sets itself.
fn arguments(defaults: &[(&str, String)], extra: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, value) in defaults {
        if !extra.contains(flag) {
            args.extend([(*flag).to_owned(), value.clone()]);
        }
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// An address a program logged in field `field` of its `message` line.
async fn logged_address(process: &mut Process, message: &str, field: &str) -> anyhow::Result<SocketAddr> {
    let event: Value = process.wait_for_event(message, READY_WITHIN).await?;
    event[field]
        .as_str()
        .and_then(|text| text.parse().ok())
        .with_context(|| format!("no address in field '{field}' of: {event}"))
}

/// A `transmission-unit` process.
#[derive(Debug)]
pub struct TransmissionUnit {
    pub process: Process,
    /// Where it serves gRPC.
    pub address: SocketAddr,
    /// Where it serves /metrics.
    pub metrics_address: SocketAddr,
    /// Its `--unit-name` (in hop records and its broker connection name).
    pub name: String,
}

impl TransmissionUnit {
    /// Starts a unit on `queue` (`extra`: more flags, which may replace the
    /// kit's `-a`, `-l`, `--unit-name`) and waits until it serves gRPC and
    /// has its broker session.
    ///
    /// # Errors
    /// It does not start, or is not ready in time.
    pub async fn start(broker: &Broker, queue: &str, extra: &[&str]) -> anyhow::Result<TransmissionUnit> {
        let mut unit = TransmissionUnit::launch(broker, queue, extra).await?;
        unit.process
            .wait_for_event("ready: publishing to the computation queue", READY_WITHIN)
            .await?;
        Ok(unit)
    }

    /// [`TransmissionUnit::start`] of another build of the program: `program`
    /// names a file beside the kit's binaries (e.g. a previous release's
    /// transmission unit, for a benchmark comparing builds in one run).
    ///
    /// # Errors
    /// It does not start, or is not ready in time.
    pub async fn start_build(
        program: &str,
        broker: &Broker,
        queue: &str,
        extra: &[&str],
    ) -> anyhow::Result<TransmissionUnit> {
        let broker_flags = [("-a", broker.uri.clone()), ("-q", queue.to_owned())];
        let mut unit = TransmissionUnit::spawn(program, &[], "tu", &broker_flags, extra, None).await?;
        unit.process
            .wait_for_event("ready: publishing to the computation queue", READY_WITHIN)
            .await?;
        Ok(unit)
    }

    /// Starts a unit and waits only until it serves gRPC (its broker may be unreachable).
    ///
    /// # Errors
    /// It does not start.
    pub async fn launch(broker: &Broker, queue: &str, extra: &[&str]) -> anyhow::Result<TransmissionUnit> {
        let broker_flags = [("-a", broker.uri.clone()), ("-q", queue.to_owned())];
        TransmissionUnit::spawn("transmission-unit", &[], "tu", &broker_flags, extra, None).await
    }

    /// Starts a direct unit (`computation-unit serve`) of exit `exit` with
    /// random weights `seed` (one libtorch thread unless `extra` sets
    /// `--threads`) and waits until it serves gRPC. It has the transmission
    /// unit's gRPC edge, so the same handle serves both.
    ///
    /// # Errors
    /// It does not start.
    pub async fn direct(exit: u8, seed: u64, extra: &[&str]) -> anyhow::Result<TransmissionUnit> {
        TransmissionUnit::direct_unit(exit, seed, extra, None).await
    }

    /// [`TransmissionUnit::direct`] seeing `hosts` as its `/etc/hosts` (a bind
    /// mount in a mount namespace of its own, so names resolve through the
    /// system resolver without touching the machine's files). Needs root and
    /// `unshare` (util-linux).
    ///
    /// # Errors
    /// It does not start.
    pub async fn direct_with_hosts(
        exit: u8,
        seed: u64,
        extra: &[&str],
        hosts: &Path,
    ) -> anyhow::Result<TransmissionUnit> {
        TransmissionUnit::direct_unit(exit, seed, extra, Some(hosts)).await
    }

    async fn direct_unit(
        exit: u8,
        seed: u64,
        extra: &[&str],
        hosts: Option<&Path>,
    ) -> anyhow::Result<TransmissionUnit> {
        let mut unit = TransmissionUnit::launch_direct_unit(exit, seed, extra, hosts).await?;
        unit.process.wait_for_event("model ready", READY_WITHIN).await?;
        // The model thread says "model ready" before the unit has taken the
        // engine: calls count once its health says so.
        crate::grpc::wait_for_health(
            unit.address,
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            READY_WITHIN,
        )
        .await?;
        Ok(unit)
    }

    /// Starts a direct unit and waits only until it serves gRPC: its model
    /// may still be loading (its health says NOT_SERVING until it is ready).
    ///
    /// # Errors
    /// It does not start.
    pub async fn launch_direct(exit: u8, seed: u64, extra: &[&str]) -> anyhow::Result<TransmissionUnit> {
        TransmissionUnit::launch_direct_unit(exit, seed, extra, None).await
    }

    async fn launch_direct_unit(
        exit: u8,
        seed: u64,
        extra: &[&str],
        hosts: Option<&Path>,
    ) -> anyhow::Result<TransmissionUnit> {
        let mut model_flags = vec![("-e", exit.to_string()), ("--threads", "1".to_owned())];
        // Random weights unless the test gives a weights file.
        if !extra.contains(&"--weights") {
            model_flags.push(("--random-weights", seed.to_string()));
        }
        TransmissionUnit::spawn("computation-unit", &["serve"], "du", &model_flags, extra, hosts).await
    }

    /// Starts `program` `command` with `flags`, the kit's gRPC defaults
    /// (port 0, JSON logs, a unique `--unit-name` starting with `prefix`) and
    /// `extra` (seeing `hosts` as `/etc/hosts` when given), and waits until
    /// it serves gRPC.
    async fn spawn(
        program: &str,
        command: &[&str],
        prefix: &str,
        flags: &[(&str, String)],
        extra: &[&str],
        hosts: Option<&Path>,
    ) -> anyhow::Result<TransmissionUnit> {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let default_name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::SeqCst)
        );
        let name = extra
            .iter()
            .position(|flag| *flag == "--unit-name")
            .and_then(|i| extra.get(i + 1))
            .map_or(default_name.clone(), |name| (*name).to_owned());
        let mut defaults = flags.to_vec();
        defaults.extend([
            ("-l", "127.0.0.1:0".to_owned()),
            ("--metrics-address", "127.0.0.1:0".to_owned()),
            ("--unit-name", default_name),
            ("--log-format", "json".to_owned()),
        ]);
        let mut args: Vec<String> = command.iter().map(|c| (*c).to_owned()).collect();
        args.extend(arguments(&defaults, extra));
        let program = binary(&bin_dir(), program)?;
        let mut process = match hosts {
            None => Process::start(&program, &args, &[])?,
            Some(hosts) => {
                // The mount is private to the new namespace; `exec` keeps the pid.
                let mut wrapped: Vec<String> = [
                    "--mount",
                    "--",
                    "sh",
                    "-c",
                    "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
                ]
                .map(str::to_owned)
                .into();
                wrapped.push(hosts.display().to_string());
                wrapped.push(program.display().to_string());
                wrapped.extend(args);
                Process::start(Path::new("unshare"), &wrapped, &[])?
            }
        };
        let address = logged_address(&mut process, "serving", "listen").await?;
        let metrics_address = logged_address(&mut process, "serving Prometheus metrics at /metrics", "address").await?;
        Ok(TransmissionUnit {
            process,
            address,
            metrics_address,
            name,
        })
    }

    /// `host:port` for `-n` of another unit.
    #[must_use]
    pub fn endpoint(&self) -> String {
        self.address.to_string()
    }

    /// A gRPC client of this unit.
    ///
    /// # Errors
    /// The unit does not accept connections.
    pub async fn client(&self) -> anyhow::Result<DNetClient<Channel>> {
        crate::grpc::client(self.address).await
    }

    /// One scrape of its /metrics.
    ///
    /// # Errors
    /// Unreadable.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        Metrics::scrape(self.metrics_address).await
    }

    /// (messages waiting, consumers) of its queue.
    ///
    /// # Errors
    /// See [`crate::grpc::qstatus`].
    pub async fn qstatus(&self) -> anyhow::Result<(u64, u64)> {
        crate::grpc::qstatus(self.address).await
    }

    /// Waits until its queue has at least `consumers` consumers.
    ///
    /// # Errors
    /// It never had them.
    pub async fn wait_for_consumers(&self, consumers: u64) -> anyhow::Result<()> {
        let address = self.address;
        crate::wait_for(
            &format!("{consumers} consumer(s) on the queue of {}", self.name),
            READY_WITHIN,
            || async move {
                crate::grpc::qstatus(address)
                    .await
                    .ok()
                    .filter(|(_, c)| *c >= consumers)
                    .map(drop)
            },
        )
        .await
    }
}

/// A `computation-unit` worker process.
#[derive(Debug)]
pub struct ComputationUnit {
    pub process: Process,
    /// Where it serves /metrics.
    pub metrics_address: SocketAddr,
}

impl ComputationUnit {
    /// Starts a worker of exit `exit` with random weights `seed` on `queue`
    /// (one libtorch thread unless `extra` sets `--threads`: tests run side
    /// by side) and waits until it consumes.
    ///
    /// # Errors
    /// It does not start, or does not consume in time.
    pub async fn start(
        broker: &Broker,
        queue: &str,
        exit: u8,
        seed: u64,
        extra: &[&str],
    ) -> anyhow::Result<ComputationUnit> {
        ComputationUnit::start_with_env(broker, queue, exit, seed, extra, &[]).await
    }

    /// [`ComputationUnit::start`] with more environment variables.
    ///
    /// # Errors
    /// It does not start, or does not consume in time.
    pub async fn start_with_env(
        broker: &Broker,
        queue: &str,
        exit: u8,
        seed: u64,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<ComputationUnit> {
        let mut unit = ComputationUnit::spawn(broker, queue, exit, seed, extra, env).await?;
        unit.process.wait_for_event("consuming", READY_WITHIN).await?;
        Ok(unit)
    }

    /// Starts a worker and waits only until it serves /metrics (its model is
    /// loaded; it may not reach the broker).
    ///
    /// # Errors
    /// It does not start.
    pub async fn launch(
        broker: &Broker,
        queue: &str,
        exit: u8,
        seed: u64,
        extra: &[&str],
    ) -> anyhow::Result<ComputationUnit> {
        ComputationUnit::spawn(broker, queue, exit, seed, extra, &[]).await
    }

    async fn spawn(
        broker: &Broker,
        queue: &str,
        exit: u8,
        seed: u64,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<ComputationUnit> {
        let mut defaults = vec![
            ("-a", broker.uri.clone()),
            ("-q", queue.to_owned()),
            ("-e", exit.to_string()),
            ("--threads", "1".to_owned()),
            ("--metrics-address", "127.0.0.1:0".to_owned()),
            ("--log-format", "json".to_owned()),
        ];
        // Random weights unless the test gives a weights file.
        if !extra.contains(&"--weights") {
            defaults.push(("--random-weights", seed.to_string()));
        }
        let args = arguments(&defaults, extra);
        let mut process = Process::start(&binary(&bin_dir(), "computation-unit")?, &args, env)?;
        let metrics_address = logged_address(&mut process, "serving Prometheus metrics at /metrics", "address").await?;
        Ok(ComputationUnit {
            process,
            metrics_address,
        })
    }

    /// One scrape of its /metrics.
    ///
    /// # Errors
    /// Unreadable (e.g. the process has ended).
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        Metrics::scrape(self.metrics_address).await
    }
}
