//! One delivery of the computation queue, from arrival to acknowledgement
//! (docs/architecture.md, "The queue and message contract"):
//!
//! - past its deadline (header `x-dnet-deadline-ms`): acknowledged, counted,
//!   not computed;
//! - redelivered (a worker ended while holding it): counted in its
//!   `x-dnet-attempts` header by putting a copy with the new count back in
//!   the queue; once it has stopped `--max-attempts` workers it is answered
//!   ERROR instead of being computed again;
//! - otherwise checked, computed by the engine, and answered; it is
//!   acknowledged only after the broker confirmed the reply. A request not
//!   computed (the worker is stopping) or whose reply was refused goes back
//!   to the queue as a copy with the same count, so that giving back is not
//!   mistaken for a crash.

use std::sync::Arc;
use std::time::Instant;

use dnet_amqp::attempts::{attempts_of, with_attempts};
use dnet_amqp::deadline::{deadline_of, with_deadline};
use dnet_model::engine::{Engine, Job, Outcome};
use dnet_model::request::{prepare, refusal, Refused, UnitSettings};
use dnet_proto::{Bytes, ComputationResponse};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use prost::Message;
use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use crate::metrics::WorkerMetrics;

/// What every delivery of one broker session needs.
pub struct Context {
    pub channel: Channel,
    pub queue: String,
    pub unit: UnitSettings,
    pub engine: Arc<Engine>,
    pub metrics: Arc<WorkerMetrics>,
    pub max_attempts: u32,
    /// Test only: exit the process on a request of this start layer.
    pub exit_on_start_layer: Option<u64>,
}

/// Handles one delivery to its end (acknowledged, or back in the queue).
pub async fn serve(mut delivery: Delivery, context: Arc<Context>) {
    // Owned as `Bytes`: the request's `x` is decoded as a slice of it, not copied.
    let body = Bytes::from(std::mem::take(&mut delivery.data));
    let properties = &delivery.properties;
    let (Some(reply_to), Some(correlation_id)) = (properties.reply_to().clone(), properties.correlation_id().clone())
    else {
        warn!(reply_to = ?properties.reply_to(), correlation_id = ?properties.correlation_id(),
            "dropping a request without reply_to or correlation_id: nobody could receive its answer");
        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        return;
    };
    let received = Instant::now();
    let deadline = deadline_of(properties);
    let mut attempts = attempts_of(properties);
    if delivery.redelivered {
        context.metrics.redelivered.inc();
        attempts += 1;
    }
    if deadline.is_some_and(|d| d <= received) {
        return expire(&delivery, &context).await;
    }
    let response = if attempts >= context.max_attempts {
        context.metrics.poisoned.inc();
        warn!(correlation_id = %correlation_id, attempts, "a request that stopped --max-attempts workers: answering ERROR");
        let message = format!(
            "this request stopped {attempts} workers (--max-attempts {}): it is not computed again",
            context.max_attempts
        );
        let start_layer = dnet_codec::decode_request(body.clone()).map_or(0, |r| r.start_layer);
        refusal(&context.unit, Refused { start_layer, message }, received.elapsed())
    } else if delivery.redelivered {
        // Count the worker that stopped before computing: if this one stops
        // too, the copy carries the count to the next.
        return give_back(&delivery, &body, &context, attempts, deadline).await;
    } else {
        match compute(&delivery, &body, &context, received, deadline, attempts).await {
            Some(response) => response,
            None => return,
        }
    };
    match publish_reply(&context.channel, reply_to, correlation_id.clone(), &response).await {
        Ok(()) => {
            context.metrics.count_reply(&response);
            let _ = delivery.ack(BasicAckOptions::default()).await;
            debug!(correlation_id = %correlation_id, status = response.status, "answered");
        }
        Err(reason) => {
            context.metrics.unpublished_replies.inc();
            warn!(correlation_id = %correlation_id, %reason, "the reply was not published; the request goes back to the queue");
            give_back(&delivery, &body, &context, attempts, deadline).await;
        }
    }
}

/// The reply to a request computed by the engine; `None` when the delivery
/// was settled otherwise (expired, or given back).
async fn compute(
    delivery: &Delivery,
    body: &Bytes,
    context: &Context,
    received: Instant,
    deadline: Option<Instant>,
    attempts: u32,
) -> Option<ComputationResponse> {
    let request = match prepare(body.clone(), &context.unit) {
        Ok(request) => request,
        Err(refused) => return Some(refusal(&context.unit, refused, received.elapsed())),
    };
    if context.exit_on_start_layer == Some(request.start as u64) {
        error!(
            start_layer = request.start,
            "test trigger: exiting as a worker killed by its request"
        );
        std::process::exit(3);
    }
    let (done, outcome) = oneshot::channel();
    let job = Job {
        request,
        received,
        deadline,
        done,
    };
    if context.engine.submit(job).is_err() {
        give_back(delivery, body, context, attempts, deadline).await;
        return None;
    }
    match outcome.await {
        Ok(Outcome::Reply(response)) => Some(response),
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
/// time left until its deadline), then acknowledges this delivery. If the
/// copy cannot be published, the delivery itself is given back (nack); if
/// even that fails, the broker requeues it when it notices the lost channel.
async fn give_back(delivery: &Delivery, body: &[u8], context: &Context, attempts: u32, deadline: Option<Instant>) {
    let properties = with_attempts(delivery.properties.clone(), attempts);
    let properties = match deadline {
        Some(deadline) => with_deadline(properties, deadline),
        None => properties,
    };
    let copied = publish(&context.channel, context.queue.as_str().into(), body, properties).await;
    let given_back = match copied {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await.is_ok(),
        Err(reason) => {
            debug!(%reason, "cannot put a copy back in the queue; giving the delivery back");
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
                .is_ok()
        }
    };
    if given_back {
        context.metrics.requeued.inc();
    }
}

/// Publishes a reply and waits for the broker's confirm.
///
/// # Errors
/// See [`publish`].
async fn publish_reply(
    channel: &Channel,
    reply_to: ShortString,
    correlation_id: ShortString,
    response: &ComputationResponse,
) -> Result<(), String> {
    let properties = BasicProperties::default().with_correlation_id(correlation_id);
    publish(channel, reply_to, &response.encode_to_vec(), properties).await
}

/// Publishes `body` to the default exchange with `routing_key` and waits for
/// the broker's confirm.
///
/// # Errors
/// Only a positive confirm counts: a refusal (nack, e.g. a full reply queue
/// with `reject-publish`) or a failed publish is an error.
async fn publish(
    channel: &Channel,
    routing_key: ShortString,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), String> {
    let confirm = channel
        .basic_publish("".into(), routing_key, BasicPublishOptions::default(), body, properties)
        .await
        .map_err(|e| format!("publish failed: {e}"))?
        .await
        .map_err(|e| format!("no confirm: {e}"))?;
    match confirm {
        Confirmation::Ack(_) => Ok(()),
        Confirmation::Nack(_) => Err("the broker refused it (nack)".to_owned()),
        Confirmation::NotRequested => Err("the channel is not in confirm mode".to_owned()),
    }
}
