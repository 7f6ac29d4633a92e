//! The queue as a unit's `Backend`: each request is published to the queue
//! as it came (re-encoded around the shared tensor bytes), and the reply is
//! decoded only down to its fields; tensors stay bytes, sliced from the
//! reply's buffer.

use dnet_common::traces;
use dnet_edge::backend::{Backend, QueueStatus};
use dnet_edge::error::{BackendError, Error};
use dnet_proto::{Bytes, ComputationRequest, ComputationResponse};
use prost::Message;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info_span, Instrument};

use crate::queue_client::QueueClient;

impl Backend for QueueClient {
    async fn compute(&self, request: &ComputationRequest, deadline: Instant) -> Result<ComputationResponse, Error> {
        // The broker round trip (publish, queue wait, computation, reply),
        // as the hop record's queue wait and compute time measure it.
        let span = traces::span(|| info_span!("dnet.queue", otel.kind = "producer", dnet.queue = %self.queue_name()));
        async {
            let reply = self
                .call(&request.encode_to_vec(), request.attempts, deadline)
                .await
                .map_err(BackendError::from)?;
            ComputationResponse::decode(Bytes::from(reply))
                .map_err(|e| Error::BadReply(format!("not a ComputationResponse ({e})")))
        }
        .instrument(span)
        .await
    }

    fn waiting(&self) -> u64 {
        QueueClient::waiting(self)
    }

    async fn status(&self) -> Result<QueueStatus, Error> {
        Ok(QueueClient::status(self).map_err(BackendError::from)?)
    }

    fn ready(&self) -> watch::Receiver<bool> {
        self.connected()
    }

    async fn close(&self) {
        QueueClient::close(self).await;
    }
}
