//! DNet's side of RabbitMQ, shared by the transmission unit and the worker.
//! Kept apart from `dnet-common` so that programs without a broker (the test
//! client) do not link an AMQP client.
//!
//! Layout:
//! - `queue`: how the computation queue is declared (the contract with the original programs).
//! - `deadline`: a request's deadline on the queue (per-message expiration and a header).
//! - `attempts`: how many workers a request has stopped (a header), for poison messages.
//! - `connect`: connecting to one of several nodes with backoff, redacting URIs, reading a CA.
//! - `limits`: the broker's message size limit, read at start.
//! - `node`: the metric naming the node a program is on.
//! - `credentials`: user and password given apart (their flags), percent-encoded into the URI.
//! - `publish`: publishing with publisher confirms.
//! - `trace`: a request's trace context in its message headers.

pub mod attempts;
pub mod connect;
pub mod credentials;
pub mod deadline;
pub mod limits;
pub mod node;
pub mod publish;
pub mod queue;
pub mod trace;

pub use connect::{close, read_ca, redact, Brokers, Connected};
pub use credentials::with_credentials;
pub use publish::{publish, PublishError};
pub use queue::{QueueContract, QueueType};
