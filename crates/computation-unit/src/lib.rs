//! The computation unit: a worker that consumes a unit's RabbitMQ queue and
//! computes each request with the model of `dnet-model`, and an offline
//! `infer` command.
//!
//! Layout:
//! - `config`: command line and `DNET_*` environment variables.
//! - `worker`: the AMQP consumer feeding the engine and publishing replies.
//! - `infer`: the offline `computation-unit infer` command.

pub mod config;
pub mod infer;
pub mod worker;
