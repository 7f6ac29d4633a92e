//! Admission before decoding (docs/architecture.md, "Admission control"): a
//! `Compute` call takes one of `--max-in-flight` slots, and one of its
//! connection's `--max-calls-per-connection`, as its HTTP/2 stream arrives,
//! before tonic reads its message. A call that finds no slot, or the unit's
//! queue over `--max-queue`, is answered RESOURCE_EXHAUSTED at once, naming
//! the limit, and its message is never read. Health, reflection and
//! `Qstatus` are not admitted: probes must pass under load. Shadow work
//! (marked by its `dnet-shadow` header) is refused first: it gets a slot
//! only while the unit is at most half busy.
//!
//! An admitted call is stamped with the time its headers arrived
//! (`deadline::Arrival`): its budget runs from there.
//!
//! A tower layer around the whole gRPC server (the shape of tower's
//! `GlobalConcurrencyLimit` + `LoadShed`, with a message that names the flag
//! and only for `Compute`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};
use tracing::debug;

use crate::connections::{self, ConnectionId};
use crate::deadline::Arrival;
use crate::metrics::{Metrics, Traffic};

/// The method whose calls take a slot.
const COMPUTE_PATH: &str = "/unit.DNet/Compute";

/// Requests waiting to be computed (the unit's queue, or its model's), as last read.
pub type Waiting = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Calls in flight per connection.
type PerConnection = Arc<Mutex<HashMap<ConnectionId, u32>>>;

/// The unit's call slots and queue limit, shared by every connection.
#[derive(Clone)]
pub struct Admission {
    slots: Arc<Semaphore>,
    max_in_flight: u32,
    max_per_connection: u32,
    per_connection: PerConnection,
    max_queue: u64,
    waiting: Waiting,
    metrics: Arc<Metrics>,
}

/// What an admitted call holds until its reply has been sent.
struct Slot {
    _global: OwnedSemaphorePermit,
    connection: Option<(ConnectionId, PerConnection)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((id, counts)) = &self.connection {
            let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(calls) = counts.get_mut(id) {
                *calls -= 1;
                if *calls == 0 {
                    counts.remove(id);
                }
            }
        }
    }
}

impl Admission {
    #[must_use]
    pub fn new(
        max_in_flight: u32,
        max_per_connection: u32,
        max_queue: u64,
        waiting: Waiting,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            max_per_connection,
            per_connection: Arc::default(),
            max_queue,
            waiting,
            metrics,
        }
    }

    /// A slot for one call on `connection`, or why there is none. Shadow
    /// work gets one only while at most half the slots are taken and at
    /// most half of `--max-queue` waits: it is refused first under load.
    fn admit(&self, connection: Option<ConnectionId>, shadow: bool) -> Result<Slot, Status> {
        let global = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "unit saturated: {} calls in flight (--max-in-flight); try again later or elsewhere",
                self.max_in_flight
            ))
        })?;
        let waiting = (self.waiting)();
        let taken = self.max_in_flight as usize - self.slots.available_permits();
        if shadow && (taken > (self.max_in_flight as usize).div_ceil(2) || waiting > self.max_queue / 2) {
            return Err(Status::resource_exhausted(
                "shadow work refused: the unit is busy (over half of --max-in-flight or --max-queue)",
            ));
        }
        if waiting > self.max_queue {
            return Err(Status::resource_exhausted(format!(
                "unit saturated: {waiting} requests wait to be computed, more than --max-queue {}",
                self.max_queue
            )));
        }
        let Some(id) = connection else {
            return Ok(Slot {
                _global: global,
                connection: None,
            });
        };
        let mut counts = self.per_connection.lock().unwrap_or_else(PoisonError::into_inner);
        let calls = counts.entry(id).or_insert(0);
        if *calls >= self.max_per_connection {
            return Err(Status::resource_exhausted(format!(
                "{} calls in flight on this connection (--max-calls-per-connection); try again later",
                self.max_per_connection
            )));
        }
        *calls += 1;
        Ok(Slot {
            _global: global,
            connection: Some((id, Arc::clone(&self.per_connection))),
        })
    }
}

impl<S> Layer<S> for Admission {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Admitted<S> {
        Admitted {
            inner,
            admission: self.clone(),
        }
    }
}

/// The server's service with admission in front.
#[derive(Clone)]
pub struct Admitted<S> {
    inner: S,
    admission: Admission,
}

impl<S, B> Service<http::Request<B>> for Admitted<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if request.uri().path() != COMPUTE_PATH {
            return Box::pin(self.inner.call(request));
        }
        let shadow = request.headers().contains_key(dnet_proto::SHADOW_HEADER);
        match self.admission.admit(connections::of(&request), shadow) {
            Ok(slot) => {
                request.extensions_mut().insert(Arrival(Instant::now()));
                let answer = self.inner.call(request);
                Box::pin(async move {
                    // The slot is held until the reply has been sent: the
                    // reply's bytes count against the bound too.
                    Ok(answer.await?.map(|reply| {
                        Body::new(reply.map_frame(move |frame| {
                            let _held = &slot;
                            frame
                        }))
                    }))
                })
            }
            Err(status) => {
                let code = format!("{:?}", status.code());
                self.admission.metrics.count(&code, Traffic::of(shadow));
                debug!(error = status.message(), "refused before reading the request");
                // The request's body is dropped unread: HTTP/2 resets the stream.
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
