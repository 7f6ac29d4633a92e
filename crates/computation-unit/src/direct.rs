//! The direct unit (`computation-unit serve`): the transmission unit's gRPC
//! edge (`transmission_unit::server`) in front of this process's own engine
//! instead of a queue. No broker: a request goes from the gRPC handler to
//! the model thread and back through channels.

use std::sync::Arc;

use dnet_model::engine::{Engine, Job, Outcome};
use dnet_model::request::{prepare_request, refusal, UnitSettings};
use dnet_proto::{ComputationRequest, ComputationResponse};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use transmission_unit::backend::Backend;
use transmission_unit::error::Error;
use transmission_unit::queue_client::QueueStatus;

/// The engine as a unit's backend.
pub struct EngineBackend {
    engine: Arc<Engine>,
    unit: UnitSettings,
    /// Always true: the model is loaded before the unit serves.
    ready: watch::Sender<bool>,
}

impl EngineBackend {
    #[must_use]
    pub fn new(engine: Arc<Engine>, unit: UnitSettings) -> Self {
        Self {
            engine,
            unit,
            ready: watch::Sender::new(true),
        }
    }
}

impl Backend for EngineBackend {
    /// Checks and decodes the request here, on the gRPC side; the model
    /// thread batches it with others of its start layer. A request refused
    /// by the checks is answered ERROR, as a worker does.
    async fn compute(&self, request: &ComputationRequest, deadline: Instant) -> Result<ComputationResponse, Error> {
        let received = std::time::Instant::now();
        let prepared = match prepare_request(request, &self.unit) {
            Ok(prepared) => prepared,
            Err(refused) => return Ok(refusal(&self.unit, refused, received.elapsed())),
        };
        let (done, outcome) = oneshot::channel();
        let job = Job {
            request: prepared,
            received,
            deadline: Some(deadline.into_std()),
            done,
        };
        self.engine.submit(job).map_err(|_| Error::Stopping)?;
        match outcome.await {
            Ok(Outcome::Reply(reply)) => Ok(reply),
            Ok(Outcome::Expired) => Err(Error::Expired(format!(
                "the model could not finish it in time ({} ms since it arrived)",
                received.elapsed().as_millis()
            ))),
            Ok(Outcome::Requeue) | Err(_) => Err(Error::Stopping),
        }
    }

    fn waiting(&self) -> u64 {
        self.engine.waiting() as u64
    }

    async fn status(&self) -> Result<QueueStatus, Error> {
        Ok(QueueStatus {
            messages: u32::try_from(self.engine.waiting()).unwrap_or(u32::MAX),
            consumers: 1,
        })
    }

    fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    async fn close(&self) {}
}
