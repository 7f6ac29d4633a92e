//! One delivery of the computation queue, from arrival to acknowledgement
//! (docs/architecture.md, "The queue and message contract"):
//!
//! - past its deadline (header `x-dnet-deadline-ms`): acknowledged, counted,
//!   not computed;
//! - redelivered (a worker ended while holding it): counted in its
//!   `x-dnet-attempts` header by putting a copy with the new count back in
//!   the queue; once it has stopped `--max-attempts` workers it is answered
//!   ERROR instead of being computed again. A redelivery of a request this
//!   worker itself returned while alive (`returned`) is not a death;
//! - otherwise checked, computed by the engine, and answered; it is
//!   acknowledged only after the broker confirmed the reply. A request not
//!   computed (the worker is stopping) or whose reply was refused goes back
//!   to the queue as a copy with the same count, so that giving back is not
//!   mistaken for a crash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dnet_amqp::attempts::{attempts_of, with_attempts};
use dnet_amqp::deadline::{deadline_of, with_deadline};
use dnet_amqp::publish::{publish, PublishError};
use dnet_model::engine::{EncodedJob, Engine, Outcome};
use dnet_model::request::{poisoned_message, refusal, Refused, UnitSettings};
use dnet_proto::{Bytes, ComputationResponse};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use prost::Message;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn, Instrument};

use crate::metrics::WorkerMetrics;
use crate::refusals::Refusals;
use crate::returned::{Held, Returned};
use crate::spans;

/// The longest a worker keeps trying to put a copy of a request back in the
/// queue before it gives the delivery back itself (which marks it redelivered).
const GIVE_BACK_PATIENCE: Duration = Duration::from_secs(10);
/// The first wait between tries of a copy the broker refused.
const GIVE_BACK_RETRY: Duration = Duration::from_millis(50);

/// What every delivery of one broker session needs.
pub struct Context {
    pub channel: Channel,
    /// The broker session the deliveries came on (held requests are keyed by it).
    pub session: u64,
    pub queue: String,
    pub unit: Arc<UnitSettings>,
    pub engine: Arc<Engine>,
    pub metrics: Arc<WorkerMetrics>,
    /// Requests held now, and those this worker returned alive.
    pub returned: Arc<Returned>,
    /// Logs ERROR replies, a few per second.
    pub refusals: Arc<Refusals>,
    /// Test only: exit the process on a request of this start layer.
    pub exit_on_start_layer: Option<u64>,
}

/// Handles one delivery to its end (acknowledged, or back in the queue);
/// `_held` marks it held by this worker until then.
pub async fn serve(mut delivery: Delivery, context: Arc<Context>, _held: Option<Held>) {
    // Owned as `Bytes`: the request's `x` is decoded as a slice of it, not copied.
    let body = Bytes::from(std::mem::take(&mut delivery.data));
    let properties = &delivery.properties;
    let (Some(reply_to), Some(correlation_id)) = (properties.reply_to().clone(), properties.correlation_id().clone())
    else {
        warn!(reply_to = ?properties.reply_to(), correlation_id = ?properties.correlation_id(),
            "dropping a request without reply_to or correlation_id: nobody could receive its answer");
        context.metrics.unanswerable.inc();
        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        return;
    };
    // Opened before the request counts as received, so that the model wait
    // and forward drawn inside it start after it. In the trace of the
    // transmission unit that published the request.
    let span = spans::computation_span("consumer");
    dnet_common::traces::continue_trace(&span, |name| dnet_amqp::trace::trace_header(properties, name));
    let received = Instant::now();
    let deadline = deadline_of(properties);
    let mut attempts = attempts_of(properties);
    let died_holding_it = delivery.redelivered && !context.returned.take(correlation_id.as_str());
    if delivery.redelivered {
        context.metrics.redelivered.inc();
    }
    if died_holding_it {
        attempts += 1;
    }
    if deadline.is_some_and(|d| d <= received) {
        return expire(&delivery, &context).await;
    }
    let max_attempts = context.unit.max_attempts;
    // Shadow work (marked by the transmission unit from its caller's header) is counted apart.
    let (response, shadow) = if attempts >= max_attempts {
        context.metrics.poisoned.inc();
        warn!(correlation_id = %correlation_id, attempts, "a request that stopped --max-attempts workers: answering ERROR");
        let start_layer = dnet_codec::decode_request(body.clone()).map_or(0, |r| r.start_layer);
        let message = poisoned_message(attempts, max_attempts);
        (
            refusal(&context.unit, Refused { start_layer, message }, received.elapsed()),
            false,
        )
    } else if died_holding_it {
        // Count the worker that stopped before computing: if this one stops
        // too, the copy carries the count to the next.
        return give_back(&delivery, &body, &context, attempts, deadline).await;
    } else {
        let computed = compute(&delivery, &body, &context, received, deadline, attempts)
            .instrument(span.clone())
            .await;
        match computed {
            Some(computed) => {
                spans::computed(&span, &computed.0);
                computed
            }
            None => return,
        }
    };
    context.refusals.log_if_error(&response, Some(correlation_id.as_str()));
    match publish_reply(&context.channel, reply_to, correlation_id.clone(), &response).await {
        Ok(()) => {
            context.metrics.count_reply(&response, shadow);
            if delivery.ack(BasicAckOptions::default()).await.is_err() {
                // The broker puts it back, marked redelivered: not a death.
                context
                    .returned
                    .returned_delivery((context.session, delivery.delivery_tag), correlation_id.as_str());
            }
            debug!(correlation_id = %correlation_id, status = response.status, "answered");
        }
        Err(reason) => {
            context.metrics.unpublished_replies.inc();
            warn!(correlation_id = %correlation_id, %reason, "the reply was not published; the request goes back to the queue");
            give_back(&delivery, &body, &context, attempts, deadline).await;
        }
    }
}

/// The reply to a request computed by the engine, and whether the request
/// was shadow work; `None` when the delivery was settled otherwise
/// (expired, or given back).
async fn compute(
    delivery: &Delivery,
    body: &Bytes,
    context: &Context,
    received: Instant,
    deadline: Option<Instant>,
    attempts: u32,
) -> Option<(ComputationResponse, bool)> {
    // The message is parsed here (the tensor stays a slice of it); the
    // model thread checks and decodes the tensor in arrival order.
    let request = match dnet_codec::decode_request(body.clone()) {
        Ok(request) => request,
        Err(message) => {
            let refused = Refused {
                start_layer: 0,
                message,
            };
            return Some((refusal(&context.unit, refused, received.elapsed()), false));
        }
    };
    let shadow = request.shadow;
    if context.exit_on_start_layer == Some(request.start_layer) {
        error!(
            start_layer = request.start_layer,
            "test trigger: exiting as a worker killed by its request"
        );
        std::process::exit(3);
    }
    let (done, outcome) = oneshot::channel();
    let job = EncodedJob {
        request,
        attempts,
        received,
        deadline,
        done,
    };
    if context.engine.submit_encoded(job).is_err() {
        give_back(delivery, body, context, attempts, deadline).await;
        return None;
    }
    match outcome.await {
        Ok(Outcome::Reply(response)) => Some((*response, shadow)),
        Ok(Outcome::Expired) => {
            expire(delivery, context).await;
            None
        }
        Ok(Outcome::Requeue) | Err(_) => {
            give_back(delivery, body, context, attempts, deadline).await;
            None
        }
    }
}

/// Nobody waits for the answer any more: acknowledge without computing.
async fn expire(delivery: &Delivery, context: &Context) {
    context.metrics.expired.inc();
    let _ = delivery.ack(BasicAckOptions::default()).await;
}

/// Puts a copy of the request back in the queue with `attempts` (and the
/// time left until its deadline), then acknowledges this delivery: a copy
/// is not marked redelivered, so giving back is not mistaken for a death. A
/// copy the broker refuses (a full queue) is tried again for a while; only
/// then, or when the channel is gone, does the delivery itself go back
/// (marked redelivered, remembered here as returned alive).
async fn give_back(delivery: &Delivery, body: &[u8], context: &Context, attempts: u32, deadline: Option<Instant>) {
    let properties = with_attempts(delivery.properties.clone(), attempts);
    let properties = match deadline {
        Some(deadline) => with_deadline(properties, deadline),
        None => properties,
    };
    let correlation_id = delivery.properties.correlation_id().as_ref().map(ShortString::as_str);
    let patience = Instant::now() + GIVE_BACK_PATIENCE;
    let patience = deadline.map_or(patience, |d| d.min(patience));
    let mut wait = GIVE_BACK_RETRY;
    let copied = loop {
        let copied = publish(&context.channel, &context.queue, body, properties.clone()).await;
        if copied.is_ok() || !context.channel.status().connected() || Instant::now() + wait >= patience {
            break copied;
        }
        if wait == GIVE_BACK_RETRY {
            info!(
                correlation_id,
                "the broker refused the copy of a request given back; trying again"
            );
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(1));
    };
    let acknowledged = match copied {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await.is_ok(),
        Err(reason) => {
            warn!(correlation_id, %reason, "cannot put a copy back in the queue; giving the delivery back");
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
            false
        }
    };
    if !acknowledged {
        // Back in the queue by the nack, or by the broker when the channel
        // closes: marked redelivered, though this worker lives.
        if let Some(id) = correlation_id {
            context
                .returned
                .returned_delivery((context.session, delivery.delivery_tag), id);
        }
    }
    context.metrics.requeued.inc();
}

/// Publishes a reply and waits for the broker's confirm.
///
/// # Errors
/// Anything but a positive confirm.
async fn publish_reply(
    channel: &Channel,
    reply_to: ShortString,
    correlation_id: ShortString,
    response: &ComputationResponse,
) -> Result<(), PublishError> {
    let properties = BasicProperties::default().with_correlation_id(correlation_id);
    publish(channel, reply_to.as_str(), &response.encode_to_vec(), properties).await
}
