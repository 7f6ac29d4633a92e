//! RPC over the unit's RabbitMQ queue, with any number of calls in flight.
//!
//! Each request is published to the computation queue with a fresh
//! `correlation_id` and this client's own exclusive reply queue as `reply_to`;
//! one consumer task routes replies to the waiting calls through a map of
//! one-shot senders. A supervisor task keeps a broker session alive: it
//! connects with backoff, and when the connection is lost it fails the calls
//! of that session with `ConnectionLost` and connects again. While a session
//! lives, the queue's waiting messages are read every 250 ms (admission).
//!
//! Each request carries its deadline (docs/architecture.md, "Deadlines"),
//! less the time its reply needs to come back: the broker drops it unread
//! once it expires, and a worker skips it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use dnet_amqp::attempts::with_attempts;
use dnet_amqp::deadline::with_deadline;
use dnet_amqp::publish::{publish, PublishError};
use dnet_amqp::{computation_queue_arguments, computation_queue_options, connect_with_backoff, redact};

use dnet_edge::backend::QueueStatus;
use dnet_edge::deadline::WAY_BACK;

use crate::queue_error::QueueError;

/// Longest wait for a queue status answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait before reconnecting when a fresh connection could not open its channels.
const SESSION_RETRY: Duration = Duration::from_secs(1);
/// How often the queue's waiting messages are read.
const QUEUE_POLL: Duration = Duration::from_millis(250);

/// Where and how to reach the computation queue.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// amqp:// URI of the broker.
    pub uri: String,
    /// Name of the computation queue.
    pub queue: String,
    /// Name the connection shows in the broker's management UI.
    pub connection_name: String,
    /// CA (PEM) trusted for `amqps://`, besides the system's.
    pub tls_ca: Option<String>,
    /// Largest request body published.
    pub max_message_bytes: usize,
    /// Exported as `dnet_pending_replies`: entries in the correlation map.
    pub pending_gauge: Gauge,
    /// Exported as `dnet_late_replies`: replies that found no call waiting.
    pub late_replies: Counter,
    /// Exported as `dnet_queue_waiting`: messages waiting in the queue, as last read.
    pub waiting_gauge: Gauge,
}

/// Handle to the RPC client; clones share one broker session.
#[derive(Clone)]
pub struct QueueClient {
    inner: Arc<Inner>,
}

struct Inner {
    settings: QueueSettings,
    /// The live broker session; `None` while (re)connecting.
    session: RwLock<Option<Arc<Session>>>,
    /// Calls waiting for their reply, by correlation id.
    pending: Mutex<HashMap<String, Pending>>,
    /// `true` while a session is live; drives the health status.
    connected: watch::Sender<bool>,
    /// Ends the supervisor and closes the connection.
    stop: CancellationToken,
    /// Tells the supervisor that the broker closed the publish channel.
    publish_closed: Notify,
    /// The supervisor task, awaited on close.
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Messages waiting in the computation queue, as last read.
    waiting: AtomicU64,
}

struct Session {
    /// Distinguishes this session's calls from those of earlier ones.
    generation: u64,
    connection: Connection,
    /// Channel with publisher confirms on, used for every request; replaced
    /// when the broker closes it (a message it refuses closes the channel).
    publish: RwLock<Channel>,
    /// This client's exclusive, server-named reply queue.
    reply_to: ShortString,
    /// The channel its replies are consumed on.
    replies: Channel,
}

impl Session {
    fn publish_channel(&self) -> Channel {
        self.publish.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

struct Pending {
    generation: u64,
    reply: oneshot::Sender<Result<Vec<u8>, QueueError>>,
}

/// Removes a call's entry from the pending map however the call ends
/// (reply, timeout, or the caller dropping the future).
struct PendingGuard<'a> {
    inner: &'a Inner,
    correlation_id: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner.remove_pending(self.correlation_id);
    }
}

impl QueueClient {
    /// Starts the client: a supervisor task connects (retrying with backoff)
    /// and keeps the session alive until [`QueueClient::close`].
    #[must_use]
    pub fn start(settings: QueueSettings) -> Self {
        let (connected, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            settings,
            session: RwLock::new(None),
            pending: Mutex::new(HashMap::new()),
            connected,
            stop: CancellationToken::new(),
            publish_closed: Notify::new(),
            supervisor: Mutex::new(None),
            waiting: AtomicU64::new(0),
        });
        let supervisor = tokio::spawn(supervise(Arc::clone(&inner)));
        *inner.supervisor.lock().unwrap_or_else(PoisonError::into_inner) = Some(supervisor);
        Self { inner }
    }

    /// Watches whether a broker session is live.
    #[must_use]
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.inner.connected.subscribe()
    }

    /// Messages waiting in the computation queue, as last read (every 250 ms).
    #[must_use]
    pub fn waiting(&self) -> u64 {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Number of calls waiting for a reply (for tests and diagnostics).
    #[must_use]
    pub fn pending_calls(&self) -> usize {
        self.inner.pending().len()
    }

    /// Publishes `body` (a request that `attempts` units have already ended
    /// holding) and waits for the matching reply until `deadline`.
    ///
    /// # Errors
    /// `NotConnected` while reconnecting, `ConnectionLost` if the session
    /// dies while waiting, `Timeout` past the deadline, `TooLarge` over the
    /// message limit, `Refused`/`Amqp` when the broker rejects the publish,
    /// `ChannelClosed` when it closes the publish channel.
    pub async fn call(&self, body: &[u8], attempts: u32, deadline: Instant) -> Result<Vec<u8>, QueueError> {
        let settings = &self.inner.settings;
        if body.len() > settings.max_message_bytes {
            return Err(QueueError::TooLarge {
                size: body.len(),
                limit: settings.max_message_bytes,
            });
        }
        let session = self.inner.current_session().ok_or_else(|| QueueError::NotConnected {
            broker: redact(&settings.uri),
        })?;
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let (reply_tx, reply_rx) = oneshot::channel();
        self.inner.insert_pending(
            correlation_id.clone(),
            Pending {
                generation: session.generation,
                reply: reply_tx,
            },
        );
        let _guard = PendingGuard {
            inner: &self.inner,
            correlation_id: &correlation_id,
        };

        let started = Instant::now();
        let exchange = async {
            let properties = BasicProperties::default()
                .with_correlation_id(correlation_id.as_str().into())
                .with_reply_to(session.reply_to.clone());
            // A reply needs time to come back (the worker's publish and
            // confirm, the broker, this consumer): the worker is told to
            // compute only what it can end that long (at most a tenth of the
            // time left) before this call gives up.
            let compute_by = deadline - WAY_BACK.min(deadline.saturating_duration_since(Instant::now()) / 10);
            let properties = with_attempts(with_deadline(properties, compute_by.into_std()), attempts);
            self.publish(&session, body, properties).await?;
            reply_rx.await.unwrap_or(Err(QueueError::ConnectionLost))
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(QueueError::Timeout {
                queue: settings.queue.clone(),
                waited_ms: started.elapsed().as_millis(),
            }),
        }
    }

    /// Publishes one request on the session's publish channel and waits
    /// for the broker's confirm.
    async fn publish(&self, session: &Session, body: &[u8], properties: BasicProperties) -> Result<(), QueueError> {
        let queue = &self.inner.settings.queue;
        let channel = session.publish_channel();
        if !channel.status().connected() {
            return Err(QueueError::NotConnected {
                broker: "the publish channel is being reopened".to_owned(),
            });
        }
        match publish(&channel, queue, body, properties).await {
            Ok(()) => Ok(()),
            Err(PublishError::Refused | PublishError::Unconfirmed) => Err(QueueError::Refused { queue: queue.clone() }),
            Err(PublishError::Failed(error)) => Err(self.publish_failed(&channel, error)),
        }
    }

    /// What a failed publish means: a channel the broker closed (reopened
    /// by the supervisor), or another AMQP failure.
    fn publish_failed(&self, channel: &Channel, error: lapin::Error) -> QueueError {
        let queue = self.inner.settings.queue.clone();
        if channel.status().connected() {
            return QueueError::Amqp { queue, source: error };
        }
        self.inner.publish_closed.notify_one();
        match error.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => QueueError::ChannelClosed {
                queue,
                code: amqp.get_id(),
                text: amqp.get_message().to_string(),
            },
            _ => QueueError::Amqp { queue, source: error },
        }
    }

    /// Message and consumer counts of the computation queue.
    ///
    /// # Errors
    /// `NotConnected` while reconnecting, `Timeout` or `Amqp` if the broker
    /// does not answer the declare.
    pub async fn status(&self) -> Result<QueueStatus, QueueError> {
        let settings = &self.inner.settings;
        let session = self.inner.current_session().ok_or_else(|| QueueError::NotConnected {
            broker: redact(&settings.uri),
        })?;
        let amqp_error = |source| QueueError::Amqp {
            queue: settings.queue.clone(),
            source,
        };
        let query = async {
            // A channel of its own: a failed declare closes the channel it ran on.
            let channel = session.connection.create_channel().await.map_err(amqp_error)?;
            let queue = declare_computation_queue(&channel, &settings.queue)
                .await
                .map_err(amqp_error)?;
            let _ = channel.close(200, "queue status read".into()).await;
            Ok(QueueStatus {
                messages: queue.message_count(),
                consumers: queue.consumer_count(),
            })
        };
        tokio::time::timeout(STATUS_TIMEOUT, query).await.unwrap_or_else(|_| {
            Err(QueueError::Timeout {
                queue: settings.queue.clone(),
                waited_ms: STATUS_TIMEOUT.as_millis(),
            })
        })
    }

    /// Stops reconnecting and closes the broker connection: first the
    /// tasks that use it, then each channel, then the connection, so that
    /// nothing is still using a channel being closed (lapin logs that as an
    /// error, and a planned close is not one).
    pub async fn close(&self) {
        self.inner.stop.cancel();
        let supervisor = self
            .inner
            .supervisor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
        if let Some(session) = self.inner.take_session() {
            let _ = session
                .replies
                .close(200, "transmission unit shutting down".into())
                .await;
            let _ = session
                .publish_channel()
                .close(200, "transmission unit shutting down".into())
                .await;
            dnet_amqp::close(&session.connection, 200, "transmission unit shutting down").await;
        }
    }
}

impl Inner {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert_pending(&self, correlation_id: String, call: Pending) {
        let mut pending = self.pending();
        pending.insert(correlation_id, call);
        self.settings.pending_gauge.set(pending.len() as i64);
    }

    fn remove_pending(&self, correlation_id: &str) -> Option<Pending> {
        let mut pending = self.pending();
        let removed = pending.remove(correlation_id);
        self.settings.pending_gauge.set(pending.len() as i64);
        removed
    }

    fn current_session(&self) -> Option<Arc<Session>> {
        self.session.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_session(&self, session: Arc<Session>) {
        *self.session.write().unwrap_or_else(PoisonError::into_inner) = Some(session);
        self.connected.send_replace(true);
    }

    fn take_session(&self) -> Option<Arc<Session>> {
        let session = self.session.write().unwrap_or_else(PoisonError::into_inner).take();
        self.connected.send_replace(false);
        session
    }

    /// Hands a reply to the call waiting for it; a late or duplicate reply
    /// (no call waiting) is dropped.
    fn route_reply(&self, correlation_id: Option<&ShortString>, body: Vec<u8>) {
        let Some(correlation_id) = correlation_id else {
            warn!("dropping a reply without correlation_id");
            return;
        };
        match self.remove_pending(correlation_id.as_str()) {
            Some(pending) => {
                let _ = pending.reply.send(Ok(body));
            }
            None => {
                self.settings.late_replies.inc();
                debug!(correlation_id = %correlation_id, "dropping a late or duplicate reply");
            }
        }
    }

    /// Ends every call of session `generation` with `ConnectionLost`.
    fn fail_session_calls(&self, generation: u64) {
        let failed: Vec<Pending> = {
            let mut pending = self.pending();
            let ids: Vec<String> = pending
                .iter()
                .filter(|(_, p)| p.generation == generation)
                .map(|(id, _)| id.clone())
                .collect();
            let failed = ids.into_iter().filter_map(|id| pending.remove(&id)).collect();
            self.settings.pending_gauge.set(pending.len() as i64);
            failed
        };
        if !failed.is_empty() {
            warn!(
                calls = failed.len(),
                "failing in-flight calls: connection to RabbitMQ lost"
            );
        }
        for call in failed {
            let _ = call.reply.send(Err(QueueError::ConnectionLost));
        }
    }
}

async fn declare_computation_queue(channel: &Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    channel
        .queue_declare(queue.into(), computation_queue_options(), computation_queue_arguments())
        .await
}

/// Opens the publish channel (confirms on), declares the computation queue,
/// and starts consuming an exclusive reply queue.
async fn open_session(connection: Connection, generation: u64, queue: &str) -> lapin::Result<(Session, Consumer)> {
    let publish = open_publish_channel(&connection).await?;
    declare_computation_queue(&publish, queue).await?;
    let replies = connection.create_channel().await?;
    let reply_queue = replies
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let reply_to = reply_queue.name().clone();
    let consumer = replies
        .basic_consume(
            reply_to.clone(),
            ShortString::from(""),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((
        Session {
            generation,
            connection,
            publish: RwLock::new(publish),
            reply_to,
            replies,
        },
        consumer,
    ))
}

/// A channel with publisher confirms on.
async fn open_publish_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// Replaces a publish channel the broker closed; the unit is not ready
/// (health NOT_SERVING) until it is open again.
///
/// # Errors
/// The connection cannot open a channel: the session is lost.
async fn reopen_publish_channel(inner: &Inner, session: &Session) -> lapin::Result<()> {
    if session.publish_channel().status().connected() {
        return Ok(()); // reopened already, for an earlier call that saw it closed
    }
    inner.connected.send_replace(false);
    warn!(queue = %inner.settings.queue, "RabbitMQ closed the publish channel; reopening it");
    let channel = open_publish_channel(&session.connection).await?;
    *session.publish.write().unwrap_or_else(PoisonError::into_inner) = channel;
    inner.connected.send_replace(true);
    info!(queue = %inner.settings.queue, "publish channel reopened: publishing again");
    Ok(())
}

/// Keeps one broker session alive until `stop`.
async fn supervise(inner: Arc<Inner>) {
    let settings = inner.settings.clone();
    let mut generation = 0_u64;
    loop {
        let Some(connection) = connect_with_backoff(
            &settings.uri,
            &settings.connection_name,
            settings.tls_ca.as_deref(),
            inner.stop.cancelled(),
        )
        .await
        else {
            return;
        };
        generation += 1;
        let events = connection.events_listener();
        let (session, consumer) = match open_session(connection, generation, &settings.queue).await {
            Ok(opened) => opened,
            Err(error) => {
                warn!(%error, queue = %settings.queue, "cannot set up the RabbitMQ session, reconnecting");
                tokio::time::sleep(SESSION_RETRY).await;
                continue;
            }
        };
        info!(queue = %settings.queue, reply_to = %session.reply_to, "ready: publishing to the computation queue");
        let session = Arc::new(session);
        inner.set_session(Arc::clone(&session));
        let stop_polling = CancellationToken::new();
        let poller = tokio::spawn(poll_queue(
            Arc::clone(&inner),
            Arc::clone(&session),
            stop_polling.clone(),
        ));

        let replies = consume_replies(&inner, consumer);
        let connection_lost = wait_for_connection_error(events);
        tokio::pin!(replies, connection_lost);
        loop {
            tokio::select! {
                () = &mut replies => break,
                () = &mut connection_lost => break,
                () = inner.publish_closed.notified() => {
                    if let Err(error) = reopen_publish_channel(&inner, &session).await {
                        warn!(%error, "cannot reopen the publish channel");
                        break;
                    }
                }
                () = inner.stop.cancelled() => {
                    stop_polling.cancel();
                    let _ = poller.await;
                    inner.fail_session_calls(generation);
                    return;
                }
            }
        }
        poller.abort();
        warn!(broker = %redact(&settings.uri), "connection to RabbitMQ lost, reconnecting");
        if let Some(session) = inner.take_session() {
            dnet_amqp::close(&session.connection, 320, "reconnecting").await;
        }
        inner.fail_session_calls(generation);
    }
}

/// Reads the computation queue's waiting messages every QUEUE_POLL with a
/// passive declare on a channel of its own, until the session ends.
async fn poll_queue(inner: Arc<Inner>, session: Arc<Session>, stop: CancellationToken) {
    let queue = inner.settings.queue.as_str();
    loop {
        let channel = match session.connection.create_channel().await {
            Ok(channel) => channel,
            Err(_) => return,
        };
        loop {
            let declared = channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..computation_queue_options()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(status) => {
                    let waiting = u64::from(status.message_count());
                    inner.waiting.store(waiting, Ordering::Relaxed);
                    inner
                        .settings
                        .waiting_gauge
                        .set(i64::try_from(waiting).unwrap_or(i64::MAX));
                }
                // The channel is closed by the failed declare (e.g. the queue
                // was deleted): open another on the next round.
                Err(error) => {
                    debug!(%error, "cannot read the queue's length");
                    break;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(QUEUE_POLL) => {}
                () = stop.cancelled() => {
                    let _ = channel.close(200, "stopping".into()).await;
                    return;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(QUEUE_POLL) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Routes replies until the consumer ends (connection or channel lost).
async fn consume_replies(inner: &Inner, mut consumer: Consumer) {
    while let Some(delivery) = consumer.next().await {
        match delivery {
            Ok(delivery) => inner.route_reply(delivery.properties.correlation_id().as_ref(), delivery.data),
            Err(error) => {
                warn!(%error, "reply consumer failed");
                return;
            }
        }
    }
}

async fn wait_for_connection_error(events: impl futures::Stream<Item = lapin::Event> + Unpin) {
    let mut events = events;
    while let Some(event) = events.next().await {
        match event {
            lapin::Event::Error(error) => {
                warn!(%error, "RabbitMQ connection error");
                return;
            }
            lapin::Event::ConnectionBlocked(reason) => {
                warn!(%reason, "RabbitMQ blocked publishing")
            }
            lapin::Event::ConnectionUnblocked => info!("RabbitMQ unblocked publishing"),
            _ => {}
        }
    }
    // The event stream ending means the connection is gone too.
}
