//! The test client: plays the end device of a DNet cascade and measures it.
//!
//! Layout:
//! - `config`: command line and `DNET_*` environment variables.
//! - `inputs`: CIFAR-10 binary records or deterministic synthetic images, normalised.
//! - `local`: the device's own layers (the computation unit's engine, in process).
//! - `call`: one request end to end: local exit or the first unit, as a `Record`.
//! - `load`: closed loop (`-c`) or open loop (`--rate`, Poisson arrivals).
//! - `report`: counts, latency percentiles, exits, accuracy, per-hop split; text and JSON.
//! - `plot`: latency distribution and answers by exit, as a PNG.

pub mod call;
pub mod config;
pub mod inputs;
pub mod load;
pub mod local;
pub mod plot;
pub mod report;
