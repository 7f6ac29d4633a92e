//! DNet wire types (package `unit`) and the tonic client and server for
//! service `unit.DNet`, generated from `proto/` at build time.
//!
//! Layout: everything is generated; `FILE_DESCRIPTOR_SET` feeds gRPC server
//! reflection.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("unit");

/// Encoded `FileDescriptorSet` of the `unit` package, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("unit_descriptor");

pub use bytes::Bytes;
pub use computation_response::{Data, StatusCode};
pub use d_net_client::DNetClient;
pub use d_net_server::{DNet, DNetServer};
