//! RPC over the unit's RabbitMQ queue, with any number of calls in flight.
//!
//! Each request is published to the computation queue with a fresh
//! `correlation_id` and this client's own exclusive reply queue as `reply_to`;
//! one consumer task routes replies to the waiting calls through a map of
//! one-shot senders. The broker session (on one of the nodes given, moving
//! to another when it is lost) is `queue_session`'s; the queue's counts,
//! read every 250 ms for admission and `Qstatus`, are `queue_poll`'s.
//!
//! Each request carries its deadline (docs/architecture.md, "Deadlines"),
//! less the time its reply needs to come back: the broker drops it unread
//! once it expires, and a worker skips it. A call whose session is lost
//! while it waits fails with `ConnectionLost`, which the edge publishes
//! again on the next session while the deadline and the retry budget allow
//! (docs/architecture.md, "Computed twice").

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use lapin::{BasicProperties, Channel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use dnet_amqp::attempts::with_attempts;
use dnet_amqp::deadline::with_deadline;
use dnet_amqp::node::NodeMetric;
use dnet_amqp::publish::{publish, PublishError};
use dnet_amqp::trace::with_trace_context;
use dnet_amqp::QueueContract;
use lapin::types::ShortString;

use dnet_edge::backend::QueueStatus;
use dnet_edge::deadline::WAY_BACK;

use crate::queue_error::QueueError;
use crate::queue_poll::QueueCounts;
use crate::queue_session::{supervise, Session};

/// The first wait before publishing again a request the broker refused; doubled each time.
const REFUSED_FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(50);
/// The longest wait between two publishes of one refused request.
const REFUSED_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Where and how to reach the computation queue.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// amqp:// URIs of the broker's nodes (one, or a cluster's).
    pub uris: Vec<String>,
    /// Name of the computation queue.
    pub queue: String,
    /// How the queue is declared (type, delivery limit): as its workers do.
    pub contract: QueueContract,
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
    /// Exported as `dnet_amqp_node`: the node the unit is on.
    pub node: NodeMetric,
    /// Exported as `dnet_queue_refused_publishes`: requests the broker
    /// refused (nack) and the unit published again within their deadline.
    pub refused_publishes: Counter,
}

/// Handle to the RPC client; clones share one broker session.
#[derive(Clone)]
pub struct QueueClient {
    inner: Arc<Inner>,
}

pub struct Inner {
    pub settings: QueueSettings,
    /// The live broker session; `None` while (re)connecting.
    session: watch::Sender<Option<Arc<Session>>>,
    /// Calls waiting for their reply, by correlation id.
    pending: Mutex<HashMap<String, Pending>>,
    /// `true` from the first session until a round in which no node
    /// answered: drives the health status (a move to another node is not
    /// an outage).
    pub connected: watch::Sender<bool>,
    /// Ends the supervisor and closes the connection.
    pub stop: CancellationToken,
    /// Why the unit stopped on its own: a setting the broker refuses.
    fatal: Mutex<Option<String>>,
    /// Tells the supervisor that the broker closed the publish channel.
    pub publish_closed: Notify,
    /// The supervisor task, awaited on close.
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The computation queue's counts, as last read.
    counts: QueueCounts,
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
            session: watch::Sender::new(None),
            pending: Mutex::new(HashMap::new()),
            connected,
            stop: CancellationToken::new(),
            fatal: Mutex::new(None),
            publish_closed: Notify::new(),
            supervisor: Mutex::new(None),
            counts: QueueCounts::default(),
        });
        let supervisor = tokio::spawn(supervise(Arc::clone(&inner)));
        *inner.supervisor.lock().unwrap_or_else(PoisonError::into_inner) = Some(supervisor);
        Self { inner }
    }

    /// Watches whether the unit is on a node (or moving to another).
    #[must_use]
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.inner.connected.subscribe()
    }

    /// Completes when the client stopped on its own, with why: a setting
    /// the broker refuses (the queue's type, the message size), which no
    /// reconnect mends. Pending while it runs.
    pub async fn failed(&self) -> String {
        self.inner.stop.cancelled().await;
        let why = self.inner.fatal.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    /// The computation queue's name.
    #[must_use]
    pub fn queue_name(&self) -> &str {
        &self.inner.settings.queue
    }

    /// Messages waiting in the computation queue, as last read (every 250 ms).
    #[must_use]
    pub fn waiting(&self) -> u64 {
        self.inner.counts.waiting.load(Ordering::Relaxed)
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
        let session = self.inner.session_by(deadline).await?;
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
            // A reply needs time to come back (the worker's publish and
            // confirm, the broker, this consumer): the worker is told to
            // compute only what it can end that long (at most a tenth of the
            // time left) before this call gives up.
            let compute_by = deadline - WAY_BACK.min(deadline.saturating_duration_since(Instant::now()) / 10);
            let mut wait = REFUSED_FIRST_WAIT;
            loop {
                // Built anew each time: the expiration is the time left now.
                let properties = BasicProperties::default()
                    .with_correlation_id(correlation_id.as_str().into())
                    .with_reply_to(session.reply_to.clone());
                let properties = with_attempts(with_deadline(properties, compute_by.into_std()), attempts);
                let properties = with_trace_context(properties);
                match self.publish(&session, body, properties).await {
                    Ok(()) => break,
                    // A nack means the queue did not take the message (a
                    // quorum queue without a majority, during an election):
                    // nothing was delivered, so publishing again is safe.
                    Err(QueueError::Refused { .. }) if Instant::now() + wait < compute_by => {
                        settings.refused_publishes.inc();
                        debug!(correlation_id = %correlation_id, wait_ms = wait.as_millis() as u64, "the broker refused the request; publishing it again");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(REFUSED_MAX_WAIT);
                        // Its reply queue went with a lost session: the edge retries the call.
                        if self.inner.current_session().map(|s| s.generation) != Some(session.generation) {
                            return Err(QueueError::ConnectionLost);
                        }
                    }
                    Err(error) => return Err(error),
                }
            }
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
            Err(PublishError::Failed(error)) => Err(self.publish_failed(&channel, error, body.len())),
        }
    }

    /// What a failed publish of `size` bytes means: a channel the broker
    /// closed (reopened by the supervisor) for this very message's size, or
    /// for another reason, or another AMQP failure.
    fn publish_failed(&self, channel: &Channel, error: lapin::Error, size: usize) -> QueueError {
        let queue = self.inner.settings.queue.clone();
        if channel.status().connected() {
            return QueueError::Amqp { queue, source: error };
        }
        self.inner.publish_closed.notify_one();
        match error.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => {
                let text = amqp.get_message().to_string();
                if refused_size(&text) == Some(size) {
                    QueueError::OverBrokerLimit { size, text }
                } else {
                    QueueError::ChannelClosed {
                        queue,
                        code: amqp.get_id(),
                        text,
                    }
                }
            }
            _ => QueueError::Amqp { queue, source: error },
        }
    }

    /// Message and consumer counts of the computation queue, as read last
    /// (at most 250 ms ago) in the live session: no call to the broker.
    ///
    /// # Errors
    /// `NotConnected` while no session has read them.
    pub fn status(&self) -> Result<QueueStatus, QueueError> {
        let counts = &self.inner.counts;
        let live = self.inner.current_session().map(|s| s.generation);
        if live.is_none() || live != Some(counts.read_in.load(Ordering::Relaxed)) {
            return Err(self.inner.not_connected());
        }
        Ok(QueueStatus {
            messages: u32::try_from(counts.waiting.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
            consumers: counts.consumers.load(Ordering::Relaxed),
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
        self.session.borrow().clone()
    }

    fn not_connected(&self) -> QueueError {
        QueueError::NotConnected {
            broker: self.settings.node.current().unwrap_or_else(|| "any node".to_owned()),
        }
    }

    /// The live session; while the unit moves to another node, the next
    /// one (waiting at most until `deadline`). With no node answering,
    /// `NotConnected` at once: callers learn of an outage without waiting.
    async fn session_by(&self, deadline: Instant) -> Result<Arc<Session>, QueueError> {
        if let Some(session) = self.current_session() {
            return Ok(session);
        }
        if !*self.connected.borrow() {
            return Err(self.not_connected());
        }
        let mut sessions = self.session.subscribe();
        let mut connected = self.connected.subscribe();
        let next = async {
            tokio::select! {
                session = sessions.wait_for(Option::is_some) => session.ok().and_then(|s| s.clone()),
                _ = connected.wait_for(|c| !c) => None,
            }
        };
        match tokio::time::timeout_at(deadline, next).await {
            Ok(Some(session)) => Ok(session),
            _ => Err(self.not_connected()),
        }
    }

    pub(crate) fn set_session(&self, session: Arc<Session>) {
        self.session.send_replace(Some(session));
        self.connected.send_replace(true);
    }

    /// The session, taken away; the unit stays ready, moving to another node.
    pub(crate) fn take_session(&self) -> Option<Arc<Session>> {
        self.session.send_replace(None)
    }

    /// Stops the client for a setting the broker refuses.
    pub(crate) fn stop_for(&self, why: String) {
        tracing::error!(%why, "stopping: the broker refuses this unit's settings");
        *self.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
        self.connected.send_replace(false);
        self.stop.cancel();
    }

    pub(crate) fn store_counts(&self, waiting: u64, consumers: u32, generation: u64) {
        self.counts.store(waiting, consumers, generation);
        self.settings
            .waiting_gauge
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Hands a reply to the call waiting for it; a late or duplicate reply
    /// (no call waiting) is dropped.
    pub(crate) fn route_reply(&self, correlation_id: Option<&ShortString>, body: Vec<u8>) {
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
    pub(crate) fn fail_session_calls(&self, generation: u64) {
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

/// The size of the message RabbitMQ refused, from its channel close text
/// ("PRECONDITION_FAILED - message size 2097160 is larger than configured
/// max size 1048576"): which of the calls publishing on the shared channel
/// sent it.
fn refused_size(text: &str) -> Option<usize> {
    let (_, after) = text.split_once("message size ")?;
    let (size, rest) = after.split_once(' ')?;
    rest.starts_with("is larger than").then(|| size.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::refused_size;

    #[test]
    fn the_refused_size_is_read_from_the_close_text() {
        assert_eq!(
            refused_size("PRECONDITION_FAILED - message size 2097160 is larger than configured max size 1048576"),
            Some(2_097_160)
        );
        assert_eq!(refused_size("PRECONDITION_FAILED - inequivalent arg"), None);
        assert_eq!(refused_size("message size x is larger than"), None);
    }
}
