//! The gRPC edge of a DNet unit: everything a unit does between its callers
//! and whatever computes its exit (a `Backend`: the transmission unit's
//! queue, or a direct unit's own engine) and the next unit. It links neither
//! lapin nor libtorch. Contracts: docs/architecture.md.
//!
//! Layout:
//! - `config`: `EdgeArgs`, the flags every unit takes (listening, next unit, deadlines, TLS, limits).
//! - `server`: `serve`: gRPC, health, reflection, metrics, admission, drain, for any `Backend`.
//! - `backend`: what computes a unit's exit.
//! - `service`: the `unit.DNet` handlers (`Compute`, `Qstatus`).
//! - `admission`: call slots taken before a call's message is read.
//! - `connections`: the cap on open gRPC connections.
//! - `deadline`: a call's deadline from the caller's `grpc-timeout`, capped.
//! - `next_unit`: the gRPC client to the next unit, and how far a failed call got.
//! - `retry`: retries of what did not get through (full jitter, a budget).
//! - `answered`: merging the next unit's answer into the samples this unit answered.
//! - `late`: answering from here when the units after this one cannot make the deadline.
//! - `shadow`: shadow work, sent on to the last exit to measure this exit's agreement.
//! - `agreement`: the windowed agreement, and the threshold that holds a target.
//! - `hop`: this unit's per-hop timing record.
//! - `metrics`: Prometheus counters and histograms.
//! - `error`: error kinds and their gRPC status codes.
//! - `tls`: TLS settings of the server and of the client to the next unit.

pub mod admission;
pub mod agreement;
pub mod answered;
pub mod backend;
pub mod config;
pub mod connections;
pub mod deadline;
pub mod error;
pub mod hop;
pub mod late;
pub mod metrics;
pub mod next_unit;
pub mod retry;
pub mod server;
pub mod service;
pub mod shadow;
pub mod tls;
