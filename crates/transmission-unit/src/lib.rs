//! The transmission unit: the gRPC front of a DNet unit whose exit is
//! computed behind a RabbitMQ queue. The gRPC edge is `dnet-edge`'s; this
//! crate adds its backend, an RPC over the queue to the computation units.
//! It never decodes tensors and never links libtorch. Its contracts (queue,
//! deadlines, hop records, error codes) are in docs/architecture.md.
//!
//! Layout:
//! - `config`: command line and `DNET_*` environment variables (the edge's and the broker's).
//! - `queue_unit`: `run(listener, config, shutdown)`: the transmission unit.
//! - `queue_client`: AMQP RPC with many calls in flight.
//! - `queue_session`: the broker session on one of the nodes, moving to another on loss.
//! - `queue_poll`: the queue's counts, read every 250 ms (admission, `Qstatus`).
//! - `queue_backend`: the queue as the edge's `Backend`.
//! - `queue_error`: why a call to the queue failed, and what the edge makes of it.

pub mod config;
pub mod queue_backend;
pub mod queue_client;
pub mod queue_error;
pub mod queue_poll;
pub mod queue_session;
pub mod queue_unit;
