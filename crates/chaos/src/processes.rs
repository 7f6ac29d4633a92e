//! Units as child processes: start, kill -9, stop/continue, restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dnet_proto::{DNetClient, QstatusRequest};

/// A child process, killed when dropped.
pub struct Process {
    pub child: Child,
}

impl Process {
    fn spawn(binary: &Path, args: &[String], log: &Path) -> anyhow::Result<Process> {
        let log = std::fs::File::create(log)?;
        let child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
        Ok(Process { child })
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (STOP, CONT, TERM).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts processes for the scenarios, with their logs in one folder.
pub struct Launcher {
    pub bin_dir: PathBuf,
    pub logs: PathBuf,
    count: usize,
}

impl Launcher {
    pub fn new(bin_dir: &Path) -> anyhow::Result<Launcher> {
        let logs = std::env::temp_dir().join(format!("dnet-chaos-{}", std::process::id()));
        std::fs::create_dir_all(&logs)?;
        Ok(Launcher {
            bin_dir: bin_dir.to_owned(),
            logs,
            count: 0,
        })
    }

    fn log(&mut self, name: &str) -> PathBuf {
        self.count += 1;
        self.logs.join(format!("{:02}-{name}.log", self.count))
    }

    /// A transmission unit on `port` for `queue`, forwarding to `next`.
    pub fn transmission_unit(
        &mut self,
        port: u16,
        queue: &str,
        next: Option<&str>,
        metrics: Option<u16>,
    ) -> anyhow::Result<Process> {
        let mut args = vec![
            "-l".into(),
            format!("127.0.0.1:{port}"),
            "-q".into(),
            queue.into(),
            "--timeout".into(),
            "10s".into(),
        ];
        if let Some(next) = next {
            args.extend(["-n".into(), next.into()]);
        }
        if let Some(metrics) = metrics {
            args.extend(["--metrics-address".into(), format!("127.0.0.1:{metrics}")]);
        }
        let log = self.log(&format!("transmission-unit-{port}"));
        Process::spawn(&self.bin_dir.join("transmission-unit"), &args, &log)
    }

    /// A computation unit of `exit` on `queue`; `answers` makes every
    /// request exit there, otherwise every request is handed on.
    pub fn computation_unit(&mut self, queue: &str, exit: u8, answers: bool) -> anyhow::Result<Process> {
        let threshold = if answers { "0" } else { "1" };
        let thresholds = vec![threshold; 15].join(",");
        let args: Vec<String> = [
            "-q",
            queue,
            "-e",
            &exit.to_string(),
            "--random-weights",
            "1",
            "--threads",
            "1",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(["--prefetch".into(), "1".into(), "--thresholds".into(), thresholds])
        .collect();
        let log = self.log(&format!("computation-unit-{queue}"));
        Process::spawn(&self.bin_dir.join("computation-unit"), &args, &log)
    }
}

/// A port nothing listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Waits (up to 60 s) until the unit at `address` reports `consumers` consumers.
pub async fn wait_ready(address: &str, consumers: u64) -> anyhow::Result<()> {
    for _ in 0..600 {
        if let Ok(mut client) = DNetClient::connect(format!("http://{address}")).await {
            if let Ok(status) = client.qstatus(QstatusRequest {}).await {
                if status.into_inner().consumer >= consumers {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("unit at {address} never had {consumers} consumers")
}

/// A counter from a unit's /metrics (0 when unreadable).
pub async fn metric(port: u16, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0.0;
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await;
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Runs `rabbitmqctl` with `args` (the local broker of the suite).
pub async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let status = tokio::task::spawn_blocking(move || {
        Command::new("rabbitmqctl")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    })
    .await??;
    anyhow::ensure!(status.success(), "rabbitmqctl failed");
    Ok(())
}
