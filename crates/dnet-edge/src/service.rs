//! The `unit.DNet` service: `Compute` and `Qstatus`.

use std::sync::Arc;
use std::time::Duration;

use dnet_codec::Answers;
use dnet_common::traces;
use dnet_proto::{
    Bytes, ComputationRequest, ComputationResponse, DNet, Data, QstatusRequest, QstatusResponse, StatusCode,
};
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{debug, field, info_span, warn, Instrument};

use crate::agreement::Agreement;
use crate::answered;
use crate::backend::Backend;
use crate::deadline::{self, Arrival};
use crate::error::Error;
use crate::hop;
use crate::late::{Held, LateAnswers, Watched};
use crate::metrics::{ExitLabel, Metrics, Traffic};
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
    /// `--answer-when-late`: when to answer from here instead of waiting.
    late: Option<LateAnswers>,
    /// This exit's agreement with the last, and its live calibration.
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
            late: settings.answer_floor.map(LateAnswers::new),
            settings,
            metrics,
            agreement,
            shadow,
        }
    }

    /// One call: this unit's exit (the backend), then the forward on
    /// NOT_SUCCESS.
    async fn handle(&self, mut request: ComputationRequest, call: Call) -> Result<ComputationResponse, Error> {
        let callers_thresholds = request.thresholds.clone();
        let controlled = self.for_this_exit(&mut request);
        let computing = Instant::now();
        let mut reply = self.compute_here(&request, call).await?;
        let round_trip = computing.elapsed();
        self.metrics
            .round_trip(Traffic::of(call.shadow), round_trip.as_secs_f64());
        let this_hop = hop::record(&self.settings.unit_name, &request, &reply, round_trip);
        let exit = this_hop.exit_layer;
        if let (Some(agreement), Some(computed)) = (&self.agreement, reply.hops.first()) {
            // Where this exit's threshold starts: not a caller's own.
            if callers_thresholds.is_empty() {
                agreement.start_from(computed);
            }
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
        Ok(finish(answer, this_hop, call.arrived))
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

    /// The call's span at this unit, in the caller's trace (its
    /// `traceparent`) or a new one; none when traces are off.
    fn call_span(&self, request: &Request<ComputationRequest>) -> tracing::Span {
        let span = traces::span(|| {
            info_span!(
                "dnet.unit",
                otel.kind = "server",
                dnet.unit = %self.settings.unit_name,
                dnet.start_layer = request.get_ref().start_layer,
                dnet.status = field::Empty,
                dnet.exit_layer = field::Empty,
                otel.status_code = field::Empty,
            )
        });
        traces::continue_trace(&span, |name| {
            request
                .metadata()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        });
        span
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
    /// answer in time (`late` decides when).
    async fn forward(
        &self,
        next: &NextUnit,
        next_request: ComputationRequest,
        answered_here: &Bytes,
        exit: u64,
        call: Call,
    ) -> Result<ComputationResponse, Error> {
        if call.shadow {
            // Shadow work goes on once, is never answered late, and is kept
            // out of the estimate and of dnet_forward_seconds.
            return next.compute_shadow(next_request, call.deadline).await;
        }
        debug!(
            next = next.address(),
            start_layer = next_request.start_layer,
            "forwarding"
        );
        let sent = timed(self.send_on(next, next_request, call), &self.metrics.forward);
        let answer = match &self.late {
            None => sent.await?,
            Some(late) => {
                let held = late.held(answered_here, exit);
                match late.watch(held, call.left(), call.answer_by(), sent).await {
                    Watched::Forwarded(answer) => answer?,
                    Watched::Late(held) => return Ok(self.give_late(held, exit)),
                }
            }
        };
        if !self.settings.forward_delay.is_zero() {
            tokio::time::sleep(self.settings.forward_delay).await;
        }
        let merged = answered::merge(answered_here.clone(), answer)?;
        self.learn_from_handed_on(answered_here, &merged);
        Ok(merged)
    }

    /// The call to the next unit, retrying what did not get through.
    async fn send_on(
        &self,
        next: &NextUnit,
        next_request: ComputationRequest,
        call: Call,
    ) -> Result<ComputationResponse, Error> {
        let retried = || self.metrics.retried("next");
        self.retries
            .run(call.deadline, retried, || {
                next.compute(next_request.clone(), call.deadline)
            })
            .await
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

    /// The samples handed on, as the units after this one answered them:
    /// outcomes for the live calibration (not from a degraded answer, which
    /// says nothing of the last exit).
    fn learn_from_handed_on(&self, answered_here: &Bytes, answer: &ComputationResponse) {
        let Some(agreement) = &self.agreement else { return };
        let Some(Data::Result(result)) = answer.data.as_ref().filter(|_| !answer.degraded) else {
            return;
        };
        if let (Ok(here), Ok(rows)) = (
            Answers::parse(answered_here, 0),
            Answers::parse(result, answer.exit_layer),
        ) {
            agreement.record_handed_on(&here, &rows);
        }
    }

    /// The answer this unit held, given late and counted.
    fn give_late(&self, held: Held, exit: u64) -> ComputationResponse {
        self.metrics
            .late_answers
            .get_or_create(&ExitLabel { exit })
            .inc_by(held.samples);
        debug!(
            exit,
            samples = held.samples,
            "answered here: the units after this one could not answer in time"
        );
        held.answer
    }
}

/// `future`, its time observed in `histogram` when it completes (not when
/// it is dropped unfinished).
async fn timed<T>(future: impl std::future::Future<Output = T>, histogram: &Histogram) -> T {
    let started = Instant::now();
    let output = future.await;
    histogram.observe(started.elapsed().as_secs_f64());
    output
}

/// What a call brings besides its request.
#[derive(Clone, Copy, Debug)]
struct Call {
    /// When its headers arrived (admission stamps it): its budget runs from here.
    arrived: Instant,
    deadline: Instant,
    /// How long before the deadline a late answer is given.
    margin: Duration,
    /// Shadow work: never retried, never answered late.
    shadow: bool,
}

impl Call {
    /// When a late answer is due.
    fn answer_by(&self) -> Instant {
        self.deadline.checked_sub(self.margin).unwrap_or(self.deadline)
    }

    /// Time left until a late answer is due.
    fn left(&self) -> Duration {
        self.answer_by().saturating_duration_since(Instant::now())
    }
}

/// `answer` with this unit's hop record first, its total time (from the
/// call's arrival) set.
fn finish(
    mut answer: ComputationResponse,
    mut this_hop: dnet_proto::HopRecord,
    arrived: Instant,
) -> ComputationResponse {
    this_hop.total_us = hop::micros(arrived.elapsed());
    answer.hops.insert(0, this_hop);
    answer
}

fn status_name(status: i32) -> &'static str {
    StatusCode::try_from(status).map_or("UNKNOWN_STATUS", |s| s.as_str_name())
}

#[tonic::async_trait]
impl<B: Backend> DNet for UnitService<B> {
    async fn compute(&self, request: Request<ComputationRequest>) -> Result<Response<ComputationResponse>, Status> {
        // The budget runs from the arrival of the call's headers, as tonic's
        // own timer does, so that this unit's answer comes before it fires.
        let arrived = request.extensions().get::<Arrival>().map_or_else(Instant::now, |a| a.0);
        let budget = deadline::budget(
            request.metadata(),
            self.settings.default_timeout,
            self.settings.max_deadline,
        );
        if budget.clamped {
            self.metrics.deadline_clamped.inc();
        }
        // Only the header marks shadow work: a body that says so without it
        // is an ordinary call (it must not skip "refused first").
        let shadow = request.metadata().contains_key(dnet_proto::SHADOW_HEADER);
        let span = self.call_span(&request);
        let mut request = request.into_inner();
        request.shadow = shadow;
        let start_layer = request.start_layer;
        let traffic = Traffic::of(shadow);
        let _in_flight = self.metrics.enter(traffic);
        if !shadow {
            // Shadow work is never retried: it earns no retries either.
            self.retries.deposit();
        }
        let call = Call {
            arrived,
            deadline: arrived + budget.time,
            margin: deadline::late_margin(budget.time),
            shadow,
        };
        let outcome = self.handle(request, call).instrument(span.clone()).await;
        let latency_ms = arrived.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Ok(answer) => {
                let status = status_name(answer.status);
                span.record("dnet.status", status);
                span.record("dnet.exit_layer", answer.exit_layer);
                self.metrics.count(status, traffic);
                debug!(
                    start_layer,
                    status,
                    exit = answer.exit_layer,
                    latency_ms,
                    shadow,
                    "answered"
                );
                Ok(Response::new(answer))
            }
            Err(error) => {
                let status = Status::from(error);
                span.record("dnet.status", format!("{:?}", status.code()));
                span.record("otel.status_code", "ERROR");
                self.metrics.count(&format!("{:?}", status.code()), traffic);
                warn!(start_layer, code = ?status.code(), error = status.message(), latency_ms, shadow, "call failed");
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
