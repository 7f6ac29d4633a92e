//! The computation unit: a worker that consumes a unit's RabbitMQ queue and
//! computes each request with the model of `dnet-model`; a direct unit
//! (`serve`: `dnet-edge`'s gRPC edge in front of its own engine); and an
//! offline `infer` command.
//!
//! Layout:
//! - `config`: command line and `DNET_*` environment variables.
//! - `worker`: the broker session: consuming the queue, shutting down.
//! - `delivery`: one delivery: deadline, attempts, compute, reply, acknowledgement.
//! - `direct`: the engine as the backend of a direct unit (`serve`): the
//!   transmission unit's gRPC edge, no broker.
//! - `returned`: requests this worker returned to the queue alive (not deaths).
//! - `refusals`: ERROR answers logged with their reason, a few per second.
//! - `spans`: the computation's spans, when traces are on.
//! - `metrics`: the worker's Prometheus metrics.
//! - `engine_metrics`: the engine's Prometheus metrics (it is their observer).
//! - `thresholds_file`: `--thresholds-file`, read again while the unit runs.
//! - `infer`: the offline `computation-unit infer` command.

pub mod config;
pub mod delivery;
pub mod direct;
pub mod engine_metrics;
pub mod infer;
pub mod metrics;
pub mod refusals;
pub mod returned;
pub mod spans;
pub mod thresholds_file;
pub mod worker;
