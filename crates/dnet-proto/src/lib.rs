//! DNet wire types (package `unit`), generated from `proto/` at build
//! time, and with the `grpc` feature the tonic client and server of service
//! `unit.DNet`. The model library uses the messages alone.
//!
//! Layout: everything is generated; `FILE_DESCRIPTOR_SET` feeds gRPC server
//! reflection; `micros` is how hop records count time; `SHADOW_HEADER` is
//! the call metadata that marks shadow work.

#![allow(missing_docs, clippy::all)]

use std::time::Duration;

include!(concat!(env!("OUT_DIR"), "/unit.rs"));

/// Encoded `FileDescriptorSet` of the `unit` package, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/unit_descriptor.bin"));

pub use bytes::Bytes;
pub use computation_response::{Data, StatusCode};
#[cfg(feature = "grpc")]
pub use d_net_client::DNetClient;
#[cfg(feature = "grpc")]
pub use d_net_server::{DNet, DNetServer};

/// The gRPC metadata that marks a shadow call (`--shadow-rate`): the calling
/// unit sets it, and the called unit's admission reads it to refuse shadow
/// work first, before reading its message.
pub const SHADOW_HEADER: &str = "dnet-shadow";

/// Whole microseconds of `duration`, saturating: hop records carry u64 microseconds.
#[must_use]
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
