//! The AMQP side of the computation unit: keep a broker session, consume
//! the queue, hand each delivery to `delivery::serve`; on shutdown stop
//! consuming, finish the batch being computed and give the rest back.

use std::future::Future;
use std::sync::Arc;

use dnet_amqp::{computation_queue_arguments, computation_queue_options, connect_with_backoff, redact};
use dnet_model::engine::Engine;
use dnet_model::request::UnitSettings;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::delivery::{self, Context};
use crate::metrics::WorkerMetrics;
use crate::refusals::Refusals;
use crate::returned::Returned;

/// On shutdown, how long deliveries already sent by the broker may take to arrive.
const DRAIN_DELIVERIES: std::time::Duration = std::time::Duration::from_secs(5);

/// Where to consume from and how to treat deliveries.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub amqp_uri: String,
    pub queue: String,
    pub prefetch: u16,
    /// What this unit accepts and how it answers.
    pub unit: UnitSettings,
    /// Test only: exit the process on a request of this start layer.
    pub exit_on_start_layer: Option<u64>,
    /// Connection name shown by the broker.
    pub connection_name: String,
    /// CA (PEM) trusted for `amqps://`, besides the system's.
    pub tls_ca: Option<String>,
}

/// Consumes the queue until `shutdown`, reconnecting when the broker is
/// lost; `ready` is true while the queue is consumed. On shutdown: stop
/// consuming, finish the batch being computed, give the other requests back,
/// close the connection.
pub async fn run(
    settings: WorkerSettings,
    engine: Arc<Engine>,
    metrics: Arc<WorkerMetrics>,
    ready: &watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let unit = Arc::new(settings.unit.clone());
    let returned = Arc::new(Returned::default());
    let refusals = Arc::new(Refusals::default());
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
                dnet_amqp::close(&connection, 320, "retrying").await;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let context = Arc::new(Context {
            channel: channel.clone(),
            queue: settings.queue.clone(),
            unit: Arc::clone(&unit),
            engine: Arc::clone(&engine),
            metrics: Arc::clone(&metrics),
            returned: Arc::clone(&returned),
            refusals: Arc::clone(&refusals),
            exit_on_start_layer: settings.exit_on_start_layer,
        });
        info!(queue = %settings.queue, prefetch = settings.prefetch, "consuming");
        ready.send_replace(true);
        let consumer_tag = consumer.tag();
        let consuming = consume(consumer, &context, &tracker);
        tokio::pin!(consuming);
        tokio::select! {
            () = &mut consuming => {
                ready.send_replace(false);
                // What it held goes back to the queue, redelivered: not a death.
                returned.session_lost();
                warn!(broker = %redact(&settings.amqp_uri), "consumer ended (connection lost or queue deleted), reconnecting");
            }
            () = &mut shutdown => {
                ready.send_replace(false);
                info!("stopping: no new requests, finishing the current batch, giving the rest back");
                engine.stop_taking_new();
                let _ = channel.basic_cancel(consumer_tag, BasicCancelOptions::default()).await;
                // Deliveries already on their way end the same way, given back,
                // not dropped (the broker would count them as a worker's death).
                let _ = tokio::time::timeout(DRAIN_DELIVERIES, &mut consuming).await;
                tracker.close();
                tracker.wait().await;
                dnet_amqp::close(&connection, 200, "computation unit stopping").await;
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

/// Hands every delivery to a task of its own until the consumer ends. Each
/// is marked held as it arrives, before its task runs: if the session ends
/// now, the broker returns it to the queue though this worker lives.
async fn consume(mut consumer: Consumer, context: &Arc<Context>, tracker: &TaskTracker) {
    while let Some(delivery) = consumer.next().await {
        match delivery {
            Ok(delivery) => {
                let held = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|id| context.returned.hold(id.as_str()));
                tracker.spawn(delivery::serve(delivery, Arc::clone(context), held));
            }
            Err(error) => {
                warn!(%error, "consumer failed");
                return;
            }
        }
    }
}
