//! DNet's test kit, shared by every integration suite, the benches and the
//! chaos suite: the real programs, started and stopped from the outside.
//!
//! Layout:
//! - `broker`: the RabbitMQ a suite talks to (the machine's, or a private
//!   node started and stopped by the suite), and `rabbitmqctl` against it.
//! - `cluster`: a private three-node RabbitMQ cluster (nodes killed and
//!   started again by the chaos scenarios).
//! - `queue`: a queue name no other test uses, deleted on `Drop`.
//! - `process`: a child process with its log in a file, killed on `Drop`;
//!   waiting for lines of its JSON log.
//! - `programs`: the transmission unit and the computation unit as
//!   processes, ready when they say so, with their addresses read from their logs.
//! - `metrics`: reading a program's `/metrics`.
//! - `otlp`: an OTLP trace receiver, keeping the spans the programs export.
//! - `grpc`: clients, health and queue status of a unit.
//! - `container`: containers of DNet's images on the host's network
//!   (Docker's client), removed on `Drop`; an image's file listing.
//! - `flood`: many large calls at once over raw HTTP/2, and a process's peak memory.
//! - `wait`: waiting for a condition, failing with what never came.
//! - `stats`: median and spread of repeated measurements, for benchmarks.
//! - `trained`: the heads-only demo model and its test set, for tests whose
//!   point is that values survive (random weights answer one class).
//! - `hostile`: hostile forms of the original's tensor pickle (deep, huge,
//!   memo-doubling, nested storages), as bytes a reader must refuse briefly.
//!
//! Everything a test starts is owned by a value whose `Drop` cleans up, so a
//! failing test leaves no process or queue behind. Declare the queue before
//! the programs that use it: locals drop in reverse order, so the programs
//! stop before their queue is deleted (a consumer would declare it again).

pub mod broker;
pub mod cluster;
pub mod container;
pub mod flood;
pub mod grpc;
pub mod hostile;
pub mod metrics;
pub mod otlp;
pub mod process;
pub mod programs;
pub mod queue;
pub mod stats;
pub mod trained;
pub mod wait;

pub use broker::{Broker, PrivateBroker};
pub use cluster::PrivateCluster;
pub use metrics::Metrics;
pub use process::Process;
pub use programs::{ComputationUnit, TransmissionUnit};
pub use queue::TestQueue;
pub use wait::wait_for;

/// A local TCP port nothing listens on right now (bound, then released).
/// Prefer letting a program bind port 0 and reading the port from its log;
/// this is for programs that must be told their port in advance.
///
/// # Panics
/// When no port can be bound on 127.0.0.1.
#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

/// The venv's python (`DNET_VENV`, default `~/.cache/dnet/venv`), which has
/// the pinned torch for reference computations.
#[must_use]
pub fn venv_python() -> std::path::PathBuf {
    let venv = std::env::var("DNET_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/dnet/venv")
        });
    venv.join("bin/python")
}
