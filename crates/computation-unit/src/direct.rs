//! The direct unit (`computation-unit serve`): the transmission unit's gRPC
//! edge (`dnet_edge::server`) in front of this process's own engine
//! instead of a queue. No broker: a request goes from the gRPC handler to
//! the model thread and back through channels.
//!
//! The edge serves while the model loads: `/livez` answers, readiness and
//! grpc.health of `unit.DNet` say NOT_SERVING until the engine is in
//! [`EngineSlot`], so no balancer sends calls to a unit still loading.

use std::sync::{Arc, Mutex, PoisonError};

use dnet_edge::backend::{Backend, QueueStatus};
use dnet_edge::error::{BackendError, Error, Retry};
use dnet_model::engine::{EncodedJob, Engine, Outcome};
use dnet_proto::{ComputationRequest, ComputationResponse};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tonic::Code;
use tracing::{error, Instrument};

use crate::refusals::Refusals;
use crate::spans;

/// The engine once it has loaded, and the readiness that follows it.
#[derive(Debug)]
pub struct EngineSlot {
    engine: Mutex<Option<Arc<Engine>>>,
    ready: watch::Sender<bool>,
}

impl EngineSlot {
    fn new() -> Self {
        Self {
            engine: Mutex::new(None),
            ready: watch::Sender::new(false),
        }
    }

    /// The engine has loaded: the unit is ready.
    pub fn fill(&self, engine: Arc<Engine>) {
        *self.engine.lock().unwrap_or_else(PoisonError::into_inner) = Some(engine);
        self.ready.send_replace(true);
    }

    /// Takes the engine out (to join its thread once the edge has stopped).
    pub fn take(&self) -> Option<Arc<Engine>> {
        self.ready.send_replace(false);
        self.engine.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Requests waiting for the model (0 while it loads).
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.get().map_or(0, |engine| engine.waiting())
    }

    fn get(&self) -> Option<Arc<Engine>> {
        self.engine.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The engine as a unit's backend.
pub struct EngineBackend {
    slot: Arc<EngineSlot>,
    refusals: Refusals,
    /// Test only: exit the process on a request of this start layer.
    exit_on_start_layer: Option<u64>,
}

impl EngineBackend {
    /// A backend whose engine is still loading: fill the returned slot when it has.
    #[must_use]
    pub fn loading(exit_on_start_layer: Option<u64>) -> (Self, Arc<EngineSlot>) {
        let slot = Arc::new(EngineSlot::new());
        let backend = Self {
            slot: Arc::clone(&slot),
            refusals: Refusals::default(),
            exit_on_start_layer,
        };
        (backend, slot)
    }
}

impl Backend for EngineBackend {
    /// The model thread checks and decodes the request (in arrival order,
    /// off this runtime's thread, which serves every other call, health and
    /// shutdown), then batches it with others of its start layer. A request
    /// refused by the checks is answered ERROR, as a worker does.
    async fn compute(&self, request: &ComputationRequest, deadline: Instant) -> Result<ComputationResponse, Error> {
        let engine = self
            .slot
            .get()
            .ok_or_else(|| unavailable("this unit is still loading its model"))?;
        if self.exit_on_start_layer == Some(request.start_layer) {
            error!(
                start_layer = request.start_layer,
                "test trigger: exiting as a unit killed by its request"
            );
            std::process::exit(3);
        }
        // A child of the call's span (the edge's `dnet.unit`), opened before
        // the request counts as received: the model wait starts inside it.
        let span = spans::computation_span("internal");
        let received = std::time::Instant::now();
        let (done, outcome) = oneshot::channel();
        let job = EncodedJob {
            request: request.clone(),
            attempts: 0,
            received,
            deadline: Some(deadline.into_std()),
            done,
        };
        engine.submit_encoded(job).map_err(|_| stopping())?;
        match outcome.instrument(span.clone()).await {
            Ok(Outcome::Reply(reply)) => {
                spans::computed(&span, &reply);
                self.refusals.log_if_error(&reply, None);
                Ok(*reply)
            }
            Ok(Outcome::Expired) => Err(BackendError::new(
                Code::DeadlineExceeded,
                format!(
                    "not computed before the deadline: the model could not finish it in time ({} ms since it arrived)",
                    received.elapsed().as_millis()
                ),
                Retry::Never,
            )
            .into()),
            Ok(Outcome::Requeue) | Err(_) => Err(stopping()),
        }
    }

    fn waiting(&self) -> u64 {
        self.slot.waiting() as u64
    }

    async fn status(&self) -> Result<QueueStatus, Error> {
        Ok(QueueStatus {
            messages: u32::try_from(self.waiting()).unwrap_or(u32::MAX),
            consumers: u32::from(self.slot.get().is_some()),
        })
    }

    fn ready(&self) -> watch::Receiver<bool> {
        self.slot.ready.subscribe()
    }

    /// The edge has drained (or given up on) its calls: requests still
    /// waiting for the model have nobody to answer, so the model thread
    /// ends after the forward it is in.
    async fn close(&self) {
        if let Some(engine) = self.slot.get() {
            engine.stop_taking_new();
        }
    }
}

/// An answer of this unit that another attempt here would meet too.
fn unavailable(message: &str) -> Error {
    BackendError::new(Code::Unavailable, message, Retry::Never).into()
}

fn stopping() -> Error {
    unavailable("this unit is stopping and computes no more requests")
}
