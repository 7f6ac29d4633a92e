//! `Backend`: where a unit computes its own exit. A transmission unit's
//! backend is its queue (an RPC to the computation units behind it); a
//! direct unit's (`computation-unit serve`) is its own engine. Everything at
//! the gRPC edge (`server`, `service`) is the same for both.

use std::future::Future;

use dnet_proto::{Bytes, ComputationRequest, ComputationResponse};
use prost::Message;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;
use crate::queue_client::{QueueClient, QueueStatus};

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

/// The transmission unit: each request is published to the queue as it came
/// (re-encoded around the shared tensor bytes), and the reply is decoded only
/// down to its fields; tensors stay bytes, sliced from the reply's buffer.
impl Backend for QueueClient {
    async fn compute(&self, request: &ComputationRequest, deadline: Instant) -> Result<ComputationResponse, Error> {
        let reply = self.call(&request.encode_to_vec(), request.attempts, deadline).await?;
        ComputationResponse::decode(Bytes::from(reply))
            .map_err(|e| Error::BadReply(format!("not a ComputationResponse ({e})")))
    }

    fn waiting(&self) -> u64 {
        QueueClient::waiting(self)
    }

    async fn status(&self) -> Result<QueueStatus, Error> {
        Ok(QueueClient::status(self).await?)
    }

    fn ready(&self) -> watch::Receiver<bool> {
        self.connected()
    }

    async fn close(&self) {
        QueueClient::close(self).await;
    }
}
