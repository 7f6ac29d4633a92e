//! Pieces both DNet programs (transmission-unit and computation-unit) share.
//!
//! Layout:
//! - `amqp`: the queue contract (declare arguments) and connecting with backoff.
//! - `duration`: parsing `500ms` / `30s` / `2m` durations from flags and env.
//! - `metrics_http`: the Prometheus `/metrics` endpoint.
//! - `shutdown`: a future that completes on SIGTERM or SIGINT.
//! - `telemetry`: tracing set-up, text or JSON.

pub mod amqp;
pub mod duration;
pub mod metrics_http;
pub mod shutdown;
pub mod telemetry;
