//! HTTP/2 settings of every DNet gRPC server and client (units, the next-unit
//! client, test-unit): tensors of ~0.7 MB per image need more than the defaults.

/// Flow-control window per stream (receive side). Intermediate tensors are
/// ~0.7 MB per image: larger windows than the 64 KiB default save
/// flow-control round trips.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// Flow-control window per connection, for a few tensors in flight at once.
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest DATA frame a peer may send us (the default is 16 KiB): a tensor
/// of ~0.7 MB then crosses in a few frames instead of ~40, each of which
/// costs both sides a trip through their HTTP/2 stacks.
pub const MAX_FRAME: u32 = 1 << 20;
