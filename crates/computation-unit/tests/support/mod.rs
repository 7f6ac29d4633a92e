//! Shared by the computation-unit tests: the torch venv's python and the
//! PyTorch reference (tests/reference/reference.py).
#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;

/// Threads for libtorch in tests, the same on both sides of a comparison.
pub const THREADS: i32 = 2;

/// The venv's python (`DNET_VENV`, default ~/.cache/dnet/venv), which has torch 2.11.0.
pub fn python() -> PathBuf {
    let venv = std::env::var("DNET_VENV").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/dnet/venv")
    });
    venv.join("bin/python")
}

/// Runs the PyTorch reference into `dir`: weights.safetensors, weights.pkl, cases.safetensors.
pub fn write_reference(dir: &Path, seed: u64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/reference.py");
    let status = Command::new(python())
        .arg(&script)
        .arg(dir)
        .arg(seed.to_string())
        .arg(THREADS.to_string())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {} (make setup installs the venv): {e}", python().display()));
    assert!(status.success(), "reference.py failed");
}

/// The release or debug binary of this package.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_computation-unit")
}

/// The broker the tests use: `DNET_TEST_AMQP`, else the local RabbitMQ.
pub fn amqp_uri() -> String {
    std::env::var("DNET_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A queue name no other test uses.
pub fn random_queue() -> String {
    format!("dnet-test-{}", uuid::Uuid::new_v4())
}

/// A computation-unit process, killed (SIGKILL) when dropped.
pub struct WorkerProcess {
    pub child: std::process::Child,
    pub metrics_port: u16,
}

impl WorkerProcess {
    /// Starts `computation-unit -q QUEUE -e EXIT --random-weights SEED` plus `extra`.
    pub fn start(queue: &str, exit: u8, seed: u64, extra: &[&str]) -> WorkerProcess {
        let metrics_port = free_port();
        let child = Command::new(binary())
            .args([
                "-a",
                &amqp_uri(),
                "-q",
                queue,
                "-e",
                &exit.to_string(),
                "--random-weights",
                &seed.to_string(),
            ])
            .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
            // One libtorch thread unless the caller says otherwise: tests run side by side.
            .args(if extra.contains(&"--threads") {
                &[][..]
            } else {
                &["--threads", "1"][..]
            })
            .args(extra)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start computation-unit");
        WorkerProcess { child, metrics_port }
    }

    /// Replies this worker has published (from its /metrics), by status.
    pub fn replies(&self) -> u64 {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)) else {
            return 0;
        };
        let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text.lines()
            .filter(|l| l.starts_with("dnet_worker_replies_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A transmission unit in this process.
pub struct Unit {
    pub address: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Unit {
    pub async fn start(queue: &str, extra: &[&str]) -> Unit {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let uri = amqp_uri();
        let name = format!("unit-{}", address.port());
        let mut args = vec!["transmission-unit", "-a", &uri, "-q", queue, "--unit-name", &name];
        args.extend_from_slice(extra);
        let config = <transmission_unit::config::Config as clap::Parser>::try_parse_from(args).expect("flags");
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            transmission_unit::server::run(listener, None, config, shutdown)
                .await
                .expect("unit runs");
        });
        let unit = Unit { address, stop, task };
        unit.wait_for_consumers(0).await;
        unit
    }

    pub async fn client(&self) -> dnet_proto::DNetClient<tonic::transport::Channel> {
        dnet_proto::DNetClient::connect(format!("http://{}", self.address))
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20)
    }

    /// (messages ready, consumers) of the unit's queue.
    pub async fn qstatus(&self) -> Option<(u64, u64)> {
        let answer = self
            .client()
            .await
            .qstatus(dnet_proto::QstatusRequest {})
            .await
            .ok()?
            .into_inner();
        Some((answer.qlength, answer.consumer))
    }

    /// Waits (up to 60 s: a worker loads its model first) for `consumers` consumers.
    pub async fn wait_for_consumers(&self, consumers: u64) {
        for _ in 0..600 {
            if self.qstatus().await.is_some_and(|(_, c)| c >= consumers) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("queue of unit {} never had {consumers} consumers", self.address);
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Deletes a test queue (declared non-auto-delete, as the original).
pub async fn delete_queue(queue: &str) {
    let connection = lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let _ = channel
        .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "test done".into()).await;
}

/// Normalised-image-like input [n, 3, 32, 32], deterministic.
pub fn images(n: i64, seed: i64) -> tch::Tensor {
    tch::manual_seed(seed);
    tch::Tensor::randn([n, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu))
}

/// Runs `computation-unit infer` and returns its output tensors by name.
pub fn infer(
    dir: &Path,
    x: &tch::Tensor,
    seed: u64,
    start: usize,
    exit: u8,
) -> std::collections::HashMap<String, tch::Tensor> {
    let input = dir.join(format!("in-{start}-{exit}.safetensors"));
    let output = dir.join(format!("out-{start}-{exit}.safetensors"));
    std::fs::write(&input, computation_unit::codec::encode_x(x).expect("encode")).expect("write input");
    let status = Command::new(binary())
        .args(["infer", "--random-weights", &seed.to_string(), "--threads", "1"])
        .args(["--start-layer", &start.to_string(), "--exit-layer", &exit.to_string()])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .status()
        .expect("run infer");
    assert!(status.success());
    tch::Tensor::read_safetensors(&output)
        .expect("read output")
        .into_iter()
        .collect()
}
