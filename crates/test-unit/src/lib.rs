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
//! - `exit_table`: every exit's answer and confidence for every input (one trunk pass per batch).
//! - `calibrate`: choosing thresholds for a target agreement or accuracy; evaluating them.
//! - `profile`: per-layer compute times on this machine.
//! - `plan`: expected latency, link bytes and agreement of every split of a 2- or 3-unit cascade.
//! - `tools`: the `calibrate`, `profile` and `plan` commands around those.

pub mod calibrate;
pub mod call;
pub mod config;
pub mod exit_table;
pub mod inputs;
pub mod load;
pub mod local;
pub mod plan;
pub mod plot;
pub mod profile;
pub mod report;
pub mod tools;
