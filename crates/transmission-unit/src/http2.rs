//! HTTP/2 settings shared by the server and the client to the next unit.

/// Flow-control window per stream (receive side). Intermediate tensors are
/// ~0.7 MB per image: larger windows than the 64 KiB default save
/// flow-control round trips.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// Flow-control window per connection, for a few tensors in flight at once.
pub const CONNECTION_WINDOW: u32 = 16 << 20;
