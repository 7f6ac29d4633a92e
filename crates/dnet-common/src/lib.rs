//! Pieces every DNet program shares; nothing here speaks AMQP (see `dnet-amqp`).
//!
//! Layout:
//! - `balance`: gRPC calls spread over every live address of a comma list or DNS name.
//! - `duration`: parsing `500ms` / `30s` / `2m` durations from flags and env.
//! - `log_limit`: logging what callers trigger, a few lines per second at most.
//! - `labels`: Prometheus label sets the programs share.
//! - `http2`: flow-control windows and frame size of every gRPC server and client.
//! - `metrics_http`: the Prometheus `/metrics` endpoint.
//! - `never_sent`: whether a failed call never reached the server (safe to send again).
//! - `resources`: the memory this process may use (cgroup-aware).
//! - `shutdown`: a future that completes on SIGTERM or SIGINT.
//! - `telemetry`: tracing set-up, text or JSON, and the span exporter when asked for.
//! - `traces`: trace context in and out of calls and messages, spans over OTLP.

pub mod balance;
pub mod duration;
pub mod http2;
pub mod labels;
pub mod log_limit;
pub mod metrics_http;
pub mod never_sent;
pub mod resources;
pub mod shutdown;
pub mod telemetry;
pub mod traces;
