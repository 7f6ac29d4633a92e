//! The computation unit: the multi-exit Inception-v3 in tch, served from a
//! RabbitMQ queue, and an offline `infer` command.
//!
//! Layout:
//! - `blocks`: BasicConv2d and Inception blocks A-E.
//! - `model`: the network, its boundary shapes and default thresholds; `forward(x, start, exit)`.
//! - `weights`: building the model from a safetensors file (checked) or a seed.
//! - `codec`: safetensors bytes <-> tensors, with full validation of `x`.
//! - `decision`: the exit rule (confidence against the threshold).
//! - `request`: one request bytes -> response (decode, validate, forward, decide, encode).
//! - `engine`: the OS thread that owns the model and computes one job at a time.
//! - `worker`: the AMQP consumer feeding the engine and publishing replies.
//! - `infer`: the offline `computation-unit infer` command.
//! - `config`: command line and `DNET_*` environment variables.

pub mod blocks;
pub mod codec;
pub mod config;
pub mod decision;
pub mod engine;
pub mod infer;
pub mod model;
pub mod request;
pub mod weights;
pub mod worker;
