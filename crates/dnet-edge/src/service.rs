//! The `unit.DNet` service: `Compute` and `Qstatus`.

use std::sync::Arc;
use std::time::Duration;

use dnet_proto::{ComputationRequest, ComputationResponse, DNet, Data, QstatusRequest, QstatusResponse, StatusCode};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::answered;
use crate::backend::Backend;
use crate::deadline;
use crate::error::Error;
use crate::hop;
use crate::metrics::Metrics;
use crate::next_unit::NextUnit;
use crate::retry::RetryPolicy;

/// Settings of the service that do not belong to the queue or the next unit.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// Name of this unit in hop records.
    pub unit_name: String,
    /// Deadline of calls whose caller set none.
    pub default_timeout: Duration,
    /// Longest deadline a caller may set.
    pub max_deadline: Duration,
    /// Test only: wait before returning a forwarded answer.
    pub forward_delay: Duration,
    /// Retries of what did not get through, percent of calls (0: off).
    pub retry_budget: f32,
}

/// The handlers of one unit, whatever computes its exit (calls are
/// admitted before they reach them: `admission`).
pub struct UnitService<B> {
    backend: Arc<B>,
    next: Option<NextUnit>,
    settings: ServiceSettings,
    metrics: Arc<Metrics>,
    retries: RetryPolicy,
}

impl<B: Backend> UnitService<B> {
    #[must_use]
    pub fn new(backend: Arc<B>, next: Option<NextUnit>, settings: ServiceSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            backend,
            next,
            retries: RetryPolicy::new(settings.retry_budget),
            settings,
            metrics,
        }
    }

    /// One call: this unit's exit (the backend), then the forward on NOT_SUCCESS.
    async fn handle(&self, request: ComputationRequest, deadline: Instant) -> Result<ComputationResponse, Error> {
        let received = Instant::now();
        let retried = || self.metrics.retried("queue");
        let reply = self
            .retries
            .run(deadline, retried, || self.backend.compute(&request, deadline))
            .await?;
        let round_trip = received.elapsed();
        self.metrics.queue_round_trip.observe(round_trip.as_secs_f64());
        let mut this_hop = hop::record(&self.settings.unit_name, &request, &reply, round_trip);

        let forward_to = self
            .next
            .as_ref()
            .filter(|_| reply.status == StatusCode::NotSuccess as i32);
        let mut answer = match forward_to {
            None => ComputationResponse {
                hops: Vec::new(),
                ..reply
            },
            Some(next) => {
                let Some(Data::NextRequest(next_request)) = reply.data else {
                    return Err(Error::BadReply("NOT_SUCCESS without a next_request".to_owned()));
                };
                let answered_here = reply.answered;
                debug!(
                    next = next.address(),
                    start_layer = next_request.start_layer,
                    "forwarding"
                );
                let forwarded = Instant::now();
                let retried = || self.metrics.retried("next");
                let answer = self
                    .retries
                    .run(deadline, retried, || next.compute(next_request.clone(), deadline))
                    .await;
                self.metrics.forward.observe(forwarded.elapsed().as_secs_f64());
                let answer = answer?;
                if !self.settings.forward_delay.is_zero() {
                    tokio::time::sleep(self.settings.forward_delay).await;
                }
                answered::merge(answered_here, answer)?
            }
        };
        this_hop.total_us = hop::micros(received.elapsed());
        answer.hops.insert(0, this_hop);
        Ok(answer)
    }
}

fn status_name(status: i32) -> &'static str {
    StatusCode::try_from(status).map_or("UNKNOWN_STATUS", |s| s.as_str_name())
}

#[tonic::async_trait]
impl<B: Backend> DNet for UnitService<B> {
    async fn compute(&self, request: Request<ComputationRequest>) -> Result<Response<ComputationResponse>, Status> {
        let budget = deadline::budget(
            request.metadata(),
            self.settings.default_timeout,
            self.settings.max_deadline,
        );
        if budget.clamped {
            self.metrics.deadline_clamped.inc();
        }
        let deadline = Instant::now() + budget.time;
        let request = request.into_inner();
        let start_layer = request.start_layer;
        let _in_flight = self.metrics.enter();
        self.retries.deposit();
        let started = Instant::now();
        let outcome = self.handle(request, deadline).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Ok(answer) => {
                let status = status_name(answer.status);
                self.metrics.count(status);
                debug!(start_layer, status, exit = answer.exit_layer, latency_ms, "answered");
                Ok(Response::new(answer))
            }
            Err(error) => {
                let status = Status::from(error);
                self.metrics.count(&format!("{:?}", status.code()));
                warn!(start_layer, code = ?status.code(), error = status.message(), latency_ms, "call failed");
                Err(status)
            }
        }
    }

    async fn qstatus(&self, _request: Request<QstatusRequest>) -> Result<Response<QstatusResponse>, Status> {
        let status = self.backend.status().await.map_err(Status::from)?;
        Ok(Response::new(QstatusResponse {
            qlength: u64::from(status.messages),
            consumer: u64::from(status.consumers),
        }))
    }
}
