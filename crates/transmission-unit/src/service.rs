//! The `unit.DNet` service: `Compute` and `Qstatus`.

use std::sync::Arc;
use std::time::Duration;

use dnet_proto::{ComputationRequest, ComputationResponse, DNet, Data, QstatusRequest, QstatusResponse, StatusCode};
use prost::Message;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::deadline;
use crate::error::Error;
use crate::hop;
use crate::metrics::Metrics;
use crate::next_unit::NextUnit;
use crate::queue_client::QueueClient;

/// Settings of the service that do not belong to the queue or the next unit.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// Name of this unit in hop records.
    pub unit_name: String,
    /// Deadline of calls whose caller set none.
    pub default_timeout: Duration,
    /// Test only: wait before returning a forwarded answer.
    pub forward_delay: Duration,
}

/// The handlers of one transmission unit.
pub struct UnitService {
    queue: QueueClient,
    next: Option<NextUnit>,
    settings: ServiceSettings,
    metrics: Arc<Metrics>,
}

impl UnitService {
    #[must_use]
    pub fn new(queue: QueueClient, next: Option<NextUnit>, settings: ServiceSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            queue,
            next,
            settings,
            metrics,
        }
    }

    /// One call: the queue round trip, then the forward on NOT_SUCCESS.
    async fn handle(&self, request: ComputationRequest, deadline: Instant) -> Result<ComputationResponse, Error> {
        let received = Instant::now();
        let reply_bytes = self.queue.call(&request.encode_to_vec(), deadline).await?;
        let round_trip = received.elapsed();
        self.metrics.queue_round_trip.observe(round_trip.as_secs_f64());
        let reply = ComputationResponse::decode(reply_bytes.as_slice())
            .map_err(|e| Error::BadReply(format!("not a ComputationResponse ({e})")))?;
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
                debug!(
                    next = next.address(),
                    start_layer = next_request.start_layer,
                    "forwarding"
                );
                let forwarded = Instant::now();
                let answer = next.compute(next_request, deadline).await;
                self.metrics.forward.observe(forwarded.elapsed().as_secs_f64());
                let answer = answer?;
                if !self.settings.forward_delay.is_zero() {
                    tokio::time::sleep(self.settings.forward_delay).await;
                }
                answer
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
impl DNet for UnitService {
    async fn compute(&self, request: Request<ComputationRequest>) -> Result<Response<ComputationResponse>, Status> {
        let budget = deadline::budget(request.metadata(), self.settings.default_timeout);
        let deadline = Instant::now() + budget;
        let request = request.into_inner();
        let start_layer = request.start_layer;
        let _in_flight = self.metrics.enter();
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
        let status = self.queue.status().await.map_err(|e| Status::from(Error::from(e)))?;
        Ok(Response::new(QstatusResponse {
            qlength: u64::from(status.messages),
            consumer: u64::from(status.consumers),
        }))
    }
}
