//! The multi-exit Inception-v3 of DNet in tch, and everything that runs it
//! without a broker: the computation unit's worker and the test client's
//! local layers both use this crate. See `docs/model-spec.md`.
//!
//! Layout:
//! - `blocks`: BasicConv2d and Inception blocks A-E.
//! - `model`: the network, its boundary shapes and default thresholds; `forward(x, start, exit)`,
//!   every exit's probabilities at once (`exit_probs`).
//! - `weights`: building the model from a safetensors file (checked) or a seed.
//! - `codec`: safetensors bytes <-> tensors (validation is `dnet-codec`'s).
//! - `decision`: the exit rule (each sample's confidence against the threshold).
//! - `thresholds`: a unit's thresholds, changeable while it runs; bounds of a request's own.
//! - `request`: one request, bytes in, response out (decode, validate, forward, decide, encode).
//! - `batch`: the batching policy: which waiting requests run together.
//! - `job`: a request waiting for the model, and what became of it.
//! - `decoder`: the thread that checks and decodes requests for the model thread, in arrival order.
//! - `engine`: the OS thread that owns the model and runs one batch at a time.
//! - `observer`: what the engine reports (forwards, waits) to the program that runs it.
//! - `settings`: the model's settings as plain values, and the text forms of each.

pub mod batch;
pub mod blocks;
pub mod codec;
pub mod decision;
pub mod decoder;
pub mod engine;
pub mod job;
pub mod model;
pub mod observer;
pub mod request;
pub mod settings;
pub mod thresholds;
pub mod weights;
