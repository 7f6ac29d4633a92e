//! The AMQP side of the computation unit: consume the queue, feed the
//! engine, publish each reply to `reply_to`, ack only after the broker
//! confirmed the reply (docs/architecture.md, "The queue and message contract").

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use dnet_amqp::{computation_queue_arguments, computation_queue_options, connect_with_backoff, redact};
use dnet_proto::{ComputationResponse, StatusCode};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use dnet_model::engine::{Engine, Job, Outcome};
use dnet_model::request::{prepare, refusal, UnitSettings};

/// Where to consume from.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub amqp_uri: String,
    pub queue: String,
    pub prefetch: u16,
    /// What this unit accepts and how it answers.
    pub unit: UnitSettings,
    /// Connection name shown by the broker.
    pub connection_name: String,
    /// CA (PEM) trusted for `amqps://`, besides the system's.
    pub tls_ca: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// The statuses a reply can have.
const REPLY_STATUSES: [StatusCode; 3] = [StatusCode::Success, StatusCode::NotSuccess, StatusCode::Error];

/// The worker's metrics.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Replies the broker confirmed, by status.
    replies: Family<StatusLabel, Counter>,
    /// Requests this worker gave back to the queue (nack with requeue).
    requeued: Counter,
    /// Replies the broker refused or that could not be published.
    unpublished_replies: Counter,
    /// Deliveries that came with the redelivered flag (given back or left by
    /// a worker before this one).
    redelivered: Counter,
}

impl WorkerMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self {
            replies: Family::default(),
            requeued: Counter::default(),
            unpublished_replies: Counter::default(),
            redelivered: Counter::default(),
        };
        // Every status from the start, so that a scrape reads 0 rather than nothing.
        for status in REPLY_STATUSES {
            let _ = metrics.replies.get_or_create(&StatusLabel {
                status: status.as_str_name(),
            });
        }
        registry.register(
            "dnet_worker_replies",
            "Replies published (confirmed by the broker), by status",
            metrics.replies.clone(),
        );
        registry.register(
            "dnet_worker_requeued",
            "Requests this worker gave back to the queue",
            metrics.requeued.clone(),
        );
        registry.register(
            "dnet_worker_unpublished_replies",
            "Replies the broker refused or that could not be published (their requests were requeued)",
            metrics.unpublished_replies.clone(),
        );
        registry.register(
            "dnet_worker_redelivered",
            "Deliveries that arrived with the redelivered flag",
            metrics.redelivered.clone(),
        );
        Arc::new(metrics)
    }

    fn count_reply(&self, response: &ComputationResponse) {
        let status = StatusCode::try_from(response.status).map_or("UNKNOWN", |s| s.as_str_name());
        self.replies.get_or_create(&StatusLabel { status }).inc();
    }

    /// (replies published, requests requeued) so far, for the stop summary.
    #[must_use]
    pub fn totals(&self) -> (u64, u64) {
        let published = REPLY_STATUSES
            .iter()
            .map(|status| {
                self.replies
                    .get_or_create(&StatusLabel {
                        status: status.as_str_name(),
                    })
                    .get()
            })
            .sum();
        (published, self.requeued.get())
    }
}

/// Consumes the queue until `shutdown`, reconnecting when the broker is
/// lost. On shutdown: stop consuming, finish the job being computed, give the
/// others back to the queue, close the connection.
pub async fn run(
    settings: WorkerSettings,
    engine: Arc<Engine>,
    metrics: Arc<WorkerMetrics>,
    shutdown: impl Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let unit = Arc::new(settings.unit.clone());
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let connecting = connect_with_backoff(
            &settings.amqp_uri,
            &settings.connection_name,
            settings.tls_ca.as_deref(),
            stop.cancelled(),
        );
        let connection = tokio::select! {
            connection = connecting => connection,
            () = &mut shutdown => None,
        };
        let Some(connection) = connection else { break };
        let (channel, consumer) = match open(&connection, &settings).await {
            Ok(opened) => opened,
            Err(error) => {
                warn!(%error, queue = %settings.queue, "cannot consume the queue, reconnecting");
                let _ = connection.close(320, "retrying".into()).await;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        info!(queue = %settings.queue, prefetch = settings.prefetch, "consuming");
        let consumer_tag = consumer.tag();
        tokio::select! {
            () = consume(consumer, &channel, &unit, &engine, &metrics, &tracker) => {
                warn!(broker = %redact(&settings.amqp_uri), "consumer ended (connection lost or queue deleted), reconnecting");
            }
            () = &mut shutdown => {
                info!("stopping: no new requests, finishing the current one, requeueing the rest");
                let _ = channel.basic_cancel(consumer_tag, BasicCancelOptions::default()).await;
                engine.stop_taking_new();
                tracker.close();
                tracker.wait().await;
                let _ = connection.close(200, "computation unit stopping".into()).await;
                break;
            }
        }
    }
    stop.cancel();
}

async fn open(connection: &Connection, settings: &WorkerSettings) -> lapin::Result<(Channel, Consumer)> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    channel.basic_qos(settings.prefetch, BasicQosOptions::default()).await?;
    channel
        .queue_declare(
            settings.queue.as_str().into(),
            computation_queue_options(),
            computation_queue_arguments(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

async fn consume(
    mut consumer: Consumer,
    channel: &Channel,
    unit: &Arc<UnitSettings>,
    engine: &Arc<Engine>,
    metrics: &Arc<WorkerMetrics>,
    tracker: &TaskTracker,
) {
    while let Some(delivery) = consumer.next().await {
        match delivery {
            Ok(delivery) => {
                let (channel, unit) = (channel.clone(), Arc::clone(unit));
                let (engine, metrics) = (Arc::clone(engine), Arc::clone(metrics));
                tracker.spawn(async move { serve(delivery, channel, &unit, engine, metrics).await });
            }
            Err(error) => {
                warn!(%error, "consumer failed");
                return;
            }
        }
    }
}

/// One delivery: compute it, publish the reply, then ack; give it back to
/// the queue when it was not computed or its reply was not confirmed.
async fn serve(
    delivery: Delivery,
    channel: Channel,
    unit: &UnitSettings,
    engine: Arc<Engine>,
    metrics: Arc<WorkerMetrics>,
) {
    let properties = &delivery.properties;
    let (Some(reply_to), Some(correlation_id)) = (properties.reply_to().clone(), properties.correlation_id().clone())
    else {
        warn!(reply_to = ?properties.reply_to(), correlation_id = ?properties.correlation_id(),
            "dropping a request without reply_to or correlation_id: nobody could receive its answer");
        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        return;
    };
    if delivery.redelivered {
        metrics.redelivered.inc();
    }
    let received = Instant::now();
    let response = match prepare(&delivery.data, unit) {
        Err(refused) => refusal(unit, refused, received.elapsed()),
        Ok(request) => {
            let (done, outcome) = oneshot::channel();
            let job = Job {
                request,
                received,
                deadline: None,
                done,
            };
            if engine.submit(job).is_err() {
                requeue(&delivery, &metrics).await;
                return;
            }
            match outcome.await {
                Ok(Outcome::Reply(response)) => response,
                Ok(Outcome::Expired) => {
                    // Nobody waits for its answer any more.
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                    return;
                }
                Ok(Outcome::Requeue) | Err(_) => {
                    requeue(&delivery, &metrics).await;
                    return;
                }
            }
        }
    };
    match publish_reply(&channel, reply_to, correlation_id.clone(), &response).await {
        Ok(()) => {
            metrics.count_reply(&response);
            let _ = delivery.ack(BasicAckOptions::default()).await;
            debug!(correlation_id = %correlation_id, status = response.status, "answered");
        }
        Err(reason) => {
            metrics.unpublished_replies.inc();
            warn!(correlation_id = %correlation_id, %reason, "the reply was not published; the request goes back to the queue");
            requeue(&delivery, &metrics).await;
        }
    }
}

/// Publishes a reply and waits for the broker's confirm.
///
/// # Errors
/// Only a positive confirm counts: a refusal (nack, e.g. a full reply queue
/// with `reject-publish`) or a failed publish is an error.
async fn publish_reply(
    channel: &Channel,
    reply_to: ShortString,
    correlation_id: ShortString,
    response: &ComputationResponse,
) -> Result<(), String> {
    let confirm = channel
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            &response.encode_to_vec(),
            BasicProperties::default().with_correlation_id(correlation_id),
        )
        .await
        .map_err(|e| format!("publish failed: {e}"))?
        .await
        .map_err(|e| format!("no confirm: {e}"))?;
    match confirm {
        Confirmation::Ack(_) => Ok(()),
        Confirmation::Nack(_) => Err("the broker refused the reply (nack)".to_owned()),
        Confirmation::NotRequested => Err("the channel is not in confirm mode".to_owned()),
    }
}

/// Gives a delivery back to the queue. If the channel is gone the nack
/// fails, and the broker requeues the delivery itself when it notices.
async fn requeue(delivery: &Delivery, metrics: &WorkerMetrics) {
    let requeued = delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await;
    if requeued.is_ok() {
        metrics.requeued.inc();
    }
}
