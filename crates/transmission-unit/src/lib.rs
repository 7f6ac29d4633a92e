//! The transmission unit: the gRPC front of a DNet unit.
//!
//! It receives `Compute` calls, hands each request to the unit's computation
//! units over a RabbitMQ RPC, and forwards `NOT_SUCCESS` answers to the next
//! unit. It never decodes tensors and never links libtorch. Its contracts
//! (queue, deadlines, hop records, error codes) are in docs/architecture.md.
//!
//! Layout:
//! - `config`: command line and `DNET_*` environment variables; `EdgeArgs`
//!   are the gRPC side any unit takes (the direct unit too).
//! - `queue_unit`: `run(listener, config, shutdown)`: the transmission unit.
//! - `server`: `serve`: gRPC, health, reflection, metrics, admission, drain,
//!   for any `Backend` (shared with `computation-unit serve`).
//! - `admission`: call slots taken before a call's message is read.
//! - `connections`: the cap on open gRPC connections.
//! - `backend`: what computes a unit's exit; the queue is one backend.
//! - `service`: the `unit.DNet` handlers (`Compute`, `Qstatus`).
//! - `queue_client`: AMQP RPC with many calls in flight, reconnecting on loss.
//! - `next_unit`: the gRPC client to the next unit in the cascade.
//! - `answered`: merging the next unit's answer into the samples this unit answered.
//! - `hop`: this unit's per-hop timing record.
//! - `deadline`: reading the caller's `grpc-timeout`.
//! - `metrics`: Prometheus counters and histograms.
//! - `error`: error kinds and their gRPC status codes.
//! - `retry`: retries of UNAVAILABLE within the deadline (full jitter, budget).
//! - `tls`: TLS settings of the server and of the client to the next unit.

pub mod admission;
pub mod answered;
pub mod backend;
pub mod config;
pub mod connections;
pub mod deadline;
pub mod error;
pub mod hop;
pub mod metrics;
pub mod next_unit;
pub mod queue_client;
pub mod queue_unit;
pub mod retry;
pub mod server;
pub mod service;
pub mod tls;
