//! `Backend`: where a unit computes its own exit. A transmission unit's
//! backend is its queue (an RPC to the computation units behind it); a
//! direct unit's (`computation-unit serve`) is its own engine. Everything at
//! the gRPC edge (`server`, `service`) is the same for both.

use std::future::Future;

use dnet_proto::{ComputationRequest, ComputationResponse};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;

/// Requests waiting to be computed and what consumes them, for `Qstatus`:
/// a queue's ready messages and consumers, or a direct unit's requests
/// waiting for its model and its one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueStatus {
    pub messages: u32,
    pub consumers: u32,
}

/// What the gRPC edge needs from whatever computes a unit's exit.
pub trait Backend: Send + Sync + 'static {
    /// This unit's reply to `request` by `deadline`: SUCCESS, NOT_SUCCESS
    /// with the request for the next unit, or ERROR. A reply may carry the
    /// computing side's hop record first in `hops` (compute time, batch size).
    fn compute(
        &self,
        request: &ComputationRequest,
        deadline: Instant,
    ) -> impl Future<Output = Result<ComputationResponse, Error>> + Send;

    /// Requests waiting to be computed, as last known (admission, `--max-queue`).
    fn waiting(&self) -> u64;

    /// Waiting requests and consumers, for `Qstatus`.
    fn status(&self) -> impl Future<Output = Result<QueueStatus, Error>> + Send;

    /// True while the unit can compute (readiness).
    fn ready(&self) -> watch::Receiver<bool>;

    /// Releases what it holds, once the last call has ended.
    fn close(&self) -> impl Future<Output = ()> + Send;
}
