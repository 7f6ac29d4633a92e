//! The `unit.DNet` service: `Compute` and `Qstatus`.

use std::sync::Arc;
use std::time::Duration;

use dnet_proto::{ComputationRequest, ComputationResponse, DNet, Data, QstatusRequest, QstatusResponse, StatusCode};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::agreement::Agreement;
use crate::answered;
use crate::backend::Backend;
use crate::deadline;
use crate::error::Error;
use crate::hop;
use crate::late::{self, Downstream};
use crate::metrics::{ExitLabel, Metrics};
use crate::next_unit::NextUnit;
use crate::retry::RetryPolicy;
use crate::shadow::Shadow;

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
    /// `--answer-when-late`: the least confidence a late answer may have
    /// (`--answer-floor`); `None`: off.
    pub answer_floor: Option<f64>,
    /// `--shadow-rate` (used when the service has a `Shadow`).
    pub shadow_rate: f32,
}

/// The handlers of one unit, whatever computes its exit (calls are
/// admitted before they reach them: `admission`).
pub struct UnitService<B> {
    backend: Arc<B>,
    next: Option<NextUnit>,
    settings: ServiceSettings,
    metrics: Arc<Metrics>,
    retries: RetryPolicy,
    /// What the units after this one have needed lately (`--answer-when-late`).
    downstream: Downstream,
    /// This exit's agreement with the last, and its threshold's controller.
    agreement: Option<Arc<Agreement>>,
    /// Where shadow work goes (`--shadow-rate`).
    shadow: Option<Shadow>,
}

impl<B: Backend> UnitService<B> {
    #[must_use]
    pub fn new(
        backend: Arc<B>,
        next: Option<NextUnit>,
        settings: ServiceSettings,
        metrics: Arc<Metrics>,
        agreement: Option<Arc<Agreement>>,
    ) -> Self {
        let shadow = match (&next, &agreement) {
            (Some(next), Some(agreement)) if settings.shadow_rate > 0.0 => {
                Some(Shadow::new(next.clone(), Arc::clone(agreement), Arc::clone(&metrics)))
            }
            _ => None,
        };
        Self {
            backend,
            next,
            retries: RetryPolicy::new(settings.retry_budget),
            settings,
            metrics,
            downstream: Downstream::default(),
            agreement,
            shadow,
        }
    }

    /// One call: this unit's exit (the backend), then the forward on
    /// NOT_SUCCESS.
    async fn handle(&self, mut request: ComputationRequest, call: Call) -> Result<ComputationResponse, Error> {
        let received = Instant::now();
        let callers_thresholds = request.thresholds.clone();
        let controlled = self.for_this_exit(&mut request);
        let mut reply = self.compute_here(&request, call).await?;
        let round_trip = received.elapsed();
        self.metrics.queue_round_trip.observe(round_trip.as_secs_f64());
        let this_hop = hop::record(&self.settings.unit_name, &request, &reply, round_trip);
        let exit = this_hop.exit_layer;
        if let Some(agreement) = &self.agreement {
            agreement.learn(exit, reply.hops.first().map_or(0.0, |hop| hop.threshold));
        }
        self.send_shadow(&mut reply, exit);

        let forward_to = self
            .next
            .as_ref()
            .filter(|_| reply.status == StatusCode::NotSuccess as i32);
        let answer = match forward_to {
            None => ComputationResponse {
                hops: Vec::new(),
                ..reply
            },
            Some(next) => {
                let Some(Data::NextRequest(mut next_request)) = reply.data else {
                    return Err(Error::BadReply("NOT_SUCCESS without a next_request".to_owned()));
                };
                if controlled {
                    next_request.thresholds = callers_thresholds;
                }
                self.forward(next, next_request, &reply.answered, exit, call).await?
            }
        };
        Ok(finish(answer, this_hop, received))
    }

    /// Gives the computation this unit's own shadow rate and, under
    /// --target-agreement, this exit's threshold (the caller's thresholds go
    /// on to the next unit as they came); whether the thresholds were replaced.
    fn for_this_exit(&self, request: &mut ComputationRequest) -> bool {
        request.shadow_rate = if request.shadow || self.shadow.is_none() {
            0.0
        } else {
            self.settings.shadow_rate
        };
        let controlled = self
            .agreement
            .as_ref()
            .filter(|_| !request.shadow)
            .and_then(|agreement| agreement.thresholds_for(&request.thresholds));
        match controlled {
            Some(thresholds) => {
                request.thresholds = thresholds;
                true
            }
            None => false,
        }
    }

    /// This unit's exit; ordinary calls retry what did not get through,
    /// shadow calls never retry.
    async fn compute_here(&self, request: &ComputationRequest, call: Call) -> Result<ComputationResponse, Error> {
        if call.shadow {
            return self.backend.compute(request, call.deadline).await;
        }
        let retried = || self.metrics.retried("queue");
        self.retries
            .run(call.deadline, retried, || self.backend.compute(request, call.deadline))
            .await
    }

    /// The next units' answer merged with this unit's rows (`answered_here`),
    /// or, under --answer-when-late, this unit's own answer when they cannot
    /// make the deadline.
    async fn forward(
        &self,
        next: &NextUnit,
        next_request: ComputationRequest,
        answered_here: &dnet_proto::Bytes,
        exit: u64,
        call: Call,
    ) -> Result<ComputationResponse, Error> {
        let late = self.settings.answer_floor.filter(|_| !call.shadow);
        let late_answer = |floor| self.late_answer(answered_here, exit, floor);
        // A forward must be back by the time a late answer would be given.
        let left = call
            .deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(call.margin);
        if let Some(answer) = late
            .filter(|_| self.downstream.expected(Instant::now()) > left)
            .and_then(late_answer)
        {
            return Ok(answer);
        }
        debug!(
            next = next.address(),
            start_layer = next_request.start_layer,
            "forwarding"
        );
        let forwarded = Instant::now();
        let forward = self.downstream.begin();
        let sent = async {
            if call.shadow {
                next.compute_shadow(next_request, call.deadline).await
            } else {
                let retried = || self.metrics.retried("next");
                self.retries
                    .run(call.deadline, retried, || {
                        next.compute(next_request.clone(), call.deadline)
                    })
                    .await
            }
        };
        let answer = match late {
            None => sent.await,
            Some(floor) => {
                tokio::pin!(sent);
                let answer_by = call.deadline.checked_sub(call.margin).unwrap_or(call.deadline);
                tokio::select! {
                    answer = &mut sent => answer,
                    () = tokio::time::sleep_until(answer_by) => match late_answer(floor) {
                        Some(answer) => {
                            forward.abandoned();
                            return Ok(answer);
                        }
                        None => sent.await,
                    },
                }
            }
        };
        self.metrics.forward.observe(forwarded.elapsed().as_secs_f64());
        let answer = answer?;
        forward.answered();
        if !self.settings.forward_delay.is_zero() {
            tokio::time::sleep(self.settings.forward_delay).await;
        }
        answered::merge(answered_here.clone(), answer)
    }

    /// Hands the reply's shadow work (if any) to the shadow sender.
    fn send_shadow(&self, reply: &mut ComputationResponse, exit: u64) {
        let (Some(shadow), Some(work)) = (&self.shadow, reply.shadow.take()) else {
            return;
        };
        let ours = match &reply.data {
            Some(Data::Result(result)) => result,
            _ => &reply.answered,
        };
        shadow.send(work, &reply.shadow_rows, ours, exit);
        reply.shadow_rows.clear();
    }

    /// The degraded answer from this unit's rows, counted, if their
    /// confidence allows it.
    fn late_answer(&self, answered: &dnet_proto::Bytes, exit: u64, floor: f64) -> Option<ComputationResponse> {
        let (answer, samples) = late::answer_here(answered, exit, floor)?;
        self.metrics
            .late_answers
            .get_or_create(&ExitLabel { exit })
            .inc_by(samples);
        debug!(
            exit,
            samples, "answered here: the units after this one could not make the deadline"
        );
        Some(answer)
    }
}

/// What a call brings besides its request.
#[derive(Clone, Copy, Debug)]
struct Call {
    deadline: Instant,
    /// How long before the deadline a late answer is given.
    margin: Duration,
    /// Shadow work: never retried, never answered late.
    shadow: bool,
}

/// `answer` with this unit's hop record first, its total time set.
fn finish(
    mut answer: ComputationResponse,
    mut this_hop: dnet_proto::HopRecord,
    received: Instant,
) -> ComputationResponse {
    this_hop.total_us = hop::micros(received.elapsed());
    answer.hops.insert(0, this_hop);
    answer
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
        let call = Call {
            deadline,
            // A late answer must reach the caller in time: its way back, or a
            // tenth of the budget if longer.
            margin: deadline::WAY_BACK.max(budget.time / 10),
            shadow: request.shadow,
        };
        let outcome = self.handle(request, call).await;
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
