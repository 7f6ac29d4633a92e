//! The AMQP side of the computation unit: keep a broker session, consume
//! the queue, hand each delivery to `delivery::serve`; on shutdown stop
//! consuming, finish the batch being computed and give the rest back.

use std::future::Future;
use std::sync::Arc;

use dnet_amqp::limits::SizeError;
use dnet_amqp::node::NodeMetric;
use dnet_amqp::queue::{declare, DeclareError};
use dnet_amqp::{Brokers, QueueContract};
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
    /// The broker's nodes (one, or a cluster's).
    pub amqp_uris: Vec<String>,
    pub queue: String,
    /// How the queue is declared (its type, its delivery limit).
    pub contract: QueueContract,
    pub prefetch: u16,
    /// Largest message this worker publishes: checked against the broker's limit on connecting.
    pub max_message_bytes: usize,
    /// What this unit accepts and how it answers.
    pub unit: UnitSettings,
    /// Test only: exit the process on a request of this start layer.
    pub exit_on_start_layer: Option<u64>,
    /// Connection name shown by the broker.
    pub connection_name: String,
    /// CA (PEM) trusted for `amqps://`, besides the system's.
    pub tls_ca: Option<String>,
}

/// Consumes the queue until `shutdown`, moving to another node (or
/// reconnecting) when the broker is lost or cancels the consumer; `ready`
/// is true from the first consume until a round of every node fails. On
/// shutdown: stop consuming, finish the batch being computed, give the
/// other requests back, close the connection.
///
/// # Errors
/// A setting the broker refuses, which no reconnect mends: the queue
/// exists with another type or delivery limit, or `max_message_bytes` is
/// over the broker's limit.
pub async fn run(
    settings: WorkerSettings,
    engine: Arc<Engine>,
    metrics: Arc<WorkerMetrics>,
    node: NodeMetric,
    ready: &watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let unit = Arc::new(settings.unit.clone());
    let returned = Arc::new(Returned::default());
    let refusals = Arc::new(Refusals::default());
    let mut brokers = Brokers::new(
        settings.amqp_uris.clone(),
        &settings.connection_name,
        settings.tls_ca.clone(),
    );
    let mut session = 0_u64;
    tokio::pin!(shutdown);
    loop {
        let no_node = || {
            ready.send_replace(false);
            node.set(None);
        };
        let connecting = brokers.connect(stop.cancelled(), no_node);
        let connected = tokio::select! {
            connected = connecting => connected,
            () = &mut shutdown => None,
        };
        let Some(connected) = connected else { break };
        let connection = connected.connection;
        session += 1;
        let opening = open(&connection, &settings, &connected.node, &mut brokers);
        let opened = tokio::select! {
            opened = opening => opened,
            () = &mut shutdown => {
                dnet_amqp::close(&connection, 200, "computation unit stopping").await;
                break;
            }
        };
        let (channel, consumer) = match opened {
            Ok(opened) => {
                brokers.opened();
                opened
            }
            Err(Opening::Refused(message)) => {
                dnet_amqp::close(&connection, 320, "a setting the broker refuses").await;
                stop.cancel();
                return Err(message);
            }
            Err(Opening::Failed(error)) => {
                warn!(%error, queue = %settings.queue, node = %connected.node, "cannot consume the queue, reconnecting");
                dnet_amqp::close(&connection, 320, "retrying").await;
                if brokers.failed_to_open() {
                    ready.send_replace(false);
                    node.set(None);
                }
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let context = Arc::new(Context {
            channel: channel.clone(),
            session,
            queue: settings.queue.clone(),
            unit: Arc::clone(&unit),
            engine: Arc::clone(&engine),
            metrics: Arc::clone(&metrics),
            returned: Arc::clone(&returned),
            refusals: Arc::clone(&refusals),
            exit_on_start_layer: settings.exit_on_start_layer,
        });
        info!(queue = %settings.queue, node = %connected.node, queue_type = settings.contract.queue_type.as_str(),
            prefetch = settings.prefetch, "consuming");
        node.set(Some(&connected.node));
        ready.send_replace(true);
        let consumer_tag = consumer.tag();
        let consuming = consume(consumer, &context, &tracker);
        tokio::pin!(consuming);
        tokio::select! {
            () = &mut consuming => {
                // What it held goes back to the queue, redelivered: not a death.
                returned.session_lost(session);
                warn!(node = %connected.node, "consumer ended (connection lost, queue moved or deleted), consuming again");
                // A cancel by the broker leaves the connection open: close it,
                // so what this session held goes back now.
                dnet_amqp::close(&connection, 320, "consuming again").await;
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
    Ok(())
}

/// Why a session could not start consuming.
enum Opening {
    /// A setting the broker refuses: the program stops, with this message.
    Refused(String),
    /// Anything else: reconnect.
    Failed(String),
}

/// Checks the broker's message size limit (once per node), then declares
/// and consumes the queue.
async fn open(
    connection: &Connection,
    settings: &WorkerSettings,
    node: &str,
    brokers: &mut Brokers,
) -> Result<(Channel, Consumer), Opening> {
    let failed = |error: lapin::Error| Opening::Failed(error.to_string());
    let size = brokers.check_message_size_once(connection, node, settings.max_message_bytes, "--max-message-bytes");
    match size.await {
        Ok(()) => {}
        Err(SizeError::TooLarge(message)) => return Err(Opening::Refused(message)),
        Err(error) => return Err(Opening::Failed(error.to_string())),
    }
    let channel = connection.create_channel().await.map_err(failed)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(failed)?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await
        .map_err(failed)?;
    match declare(&channel, &settings.queue, settings.contract).await {
        Ok(_) => {}
        Err(refused @ DeclareError::Mismatch { .. }) => return Err(Opening::Refused(refused.to_string())),
        Err(error) => return Err(Opening::Failed(error.to_string())),
    }
    let consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(failed)?;
    Ok((channel, consumer))
}

/// Hands every delivery to a task of its own until the consumer ends. Each
/// is marked held as it arrives, before its task runs: if the session ends
/// now, the broker returns it to the queue though this worker lives.
async fn consume(mut consumer: Consumer, context: &Arc<Context>, tracker: &TaskTracker) {
    while let Some(delivery) = consumer.next().await {
        match delivery {
            Ok(delivery) => {
                let key = (context.session, delivery.delivery_tag);
                let held = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|id| context.returned.hold(key, id.as_str()));
                tracker.spawn(delivery::serve(delivery, Arc::clone(context), held));
            }
            Err(error) => {
                warn!(%error, "consumer failed");
                return;
            }
        }
    }
}
