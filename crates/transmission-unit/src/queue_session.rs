//! The transmission unit's broker session: connect to a node that answers
//! (a cluster's, in turn), open the publish channel and the reply queue,
//! and keep them until the connection is lost, then do it again on
//! another node. The unit stays ready through a reconnect: it is not ready
//! only before its first session and after a round in which no node answered.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use dnet_amqp::limits::SizeError;
use dnet_amqp::queue::{declare, DeclareError};
use dnet_amqp::Brokers;

use crate::queue_client::Inner;
use crate::queue_poll::poll_queue;

/// Wait before reconnecting when a fresh connection could not open its channels.
const SESSION_RETRY: Duration = Duration::from_secs(1);

/// One connection to one node, and what the unit uses on it.
pub struct Session {
    /// Distinguishes this session's calls from those of earlier ones.
    pub generation: u64,
    /// The node (`host:port`) it is on.
    pub node: String,
    pub connection: Connection,
    /// Channel with publisher confirms on, used for every request; replaced
    /// when the broker closes it (a message it refuses closes the channel).
    publish: RwLock<Channel>,
    /// This client's exclusive, server-named reply queue (on this node:
    /// it goes when the connection goes).
    pub reply_to: ShortString,
    /// The channel its replies are consumed on.
    pub replies: Channel,
}

impl Session {
    pub fn publish_channel(&self) -> Channel {
        self.publish.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Why a session could not start.
enum Opening {
    /// A setting the broker refuses: the unit stops, with this message.
    Refused(String),
    /// Anything else: reconnect.
    Failed(String),
}

/// Checks the broker's message size limit (once per node), opens the
/// publish channel (confirms on), declares the computation queue, and
/// starts consuming an exclusive reply queue.
async fn open_session(
    inner: &Inner,
    connection: Connection,
    node: &str,
    generation: u64,
    brokers: &mut Brokers,
) -> Result<(Session, Consumer), Opening> {
    let failed = |error: lapin::Error| Opening::Failed(error.to_string());
    let settings = &inner.settings;
    let size = brokers.check_message_size_once(&connection, node, settings.max_message_bytes, "--max-message-bytes");
    match size.await {
        Ok(()) => {}
        Err(SizeError::TooLarge(message)) => return Err(Opening::Refused(message)),
        Err(error) => return Err(Opening::Failed(error.to_string())),
    }
    let publish = open_publish_channel(&connection).await.map_err(failed)?;
    match declare(&publish, &settings.queue, settings.contract).await {
        // The declare's counts are this session's first read (Qstatus, admission).
        Ok(queue) => inner.store_counts(u64::from(queue.message_count()), queue.consumer_count(), generation),
        Err(refused @ DeclareError::Mismatch { .. }) => return Err(Opening::Refused(refused.to_string())),
        Err(error) => return Err(Opening::Failed(error.to_string())),
    }
    let replies = connection.create_channel().await.map_err(failed)?;
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
        .await
        .map_err(failed)?;
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
        .await
        .map_err(failed)?;
    Ok((
        Session {
            generation,
            node: node.to_owned(),
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

/// Replaces a publish channel the broker closed. The unit stays ready:
/// one caller's message the broker refused must not take it out of its
/// callers' balancing.
///
/// # Errors
/// The connection cannot open a channel: the session is lost.
async fn reopen_publish_channel(inner: &Inner, session: &Session) -> lapin::Result<()> {
    if session.publish_channel().status().connected() {
        return Ok(()); // reopened already, for an earlier call that saw it closed
    }
    warn!(queue = %inner.settings.queue, "RabbitMQ closed the publish channel; reopening it");
    let channel = open_publish_channel(&session.connection).await?;
    *session.publish.write().unwrap_or_else(PoisonError::into_inner) = channel;
    info!(queue = %inner.settings.queue, "publish channel reopened: publishing again");
    Ok(())
}

/// Keeps one broker session alive until `stop`, on whichever node answers.
/// Ends early, with `inner.fatal` set, on a setting the broker refuses.
pub async fn supervise(inner: Arc<Inner>) {
    let settings = inner.settings.clone();
    let mut brokers = Brokers::new(
        settings.uris.clone(),
        &settings.connection_name,
        settings.tls_ca.clone(),
    );
    let mut generation = 0_u64;
    loop {
        let no_node = || {
            inner.connected.send_replace(false);
            settings.node.set(None);
        };
        let Some(connected) = brokers.connect(inner.stop.cancelled(), no_node).await else {
            return;
        };
        generation += 1;
        let events = connected.connection.events_listener();
        let opening = open_session(&inner, connected.connection, &connected.node, generation, &mut brokers);
        let opened = tokio::select! {
            opened = opening => opened,
            () = inner.stop.cancelled() => return,
        };
        let (session, consumer) = match opened {
            Ok(opened) => {
                brokers.opened();
                opened
            }
            Err(Opening::Refused(message)) => {
                inner.stop_for(message);
                return;
            }
            Err(Opening::Failed(error)) => {
                warn!(%error, queue = %settings.queue, node = %connected.node,
                    "cannot set up the RabbitMQ session, reconnecting");
                if brokers.failed_to_open() {
                    no_node();
                }
                tokio::select! {
                    () = tokio::time::sleep(SESSION_RETRY) => continue,
                    () = inner.stop.cancelled() => return,
                }
            }
        };
        info!(queue = %settings.queue, node = %session.node, queue_type = settings.contract.queue_type.as_str(),
            reply_to = %session.reply_to, "ready: publishing to the computation queue");
        settings.node.set(Some(&session.node));
        let session = Arc::new(session);
        inner.set_session(Arc::clone(&session));
        let stop_polling = CancellationToken::new();
        let poller = tokio::spawn(poll_queue(
            Arc::clone(&inner),
            Arc::clone(&session),
            stop_polling.clone(),
        ));

        let reply_tag = consumer.tag();
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
                    // Cancelled here, in order: a consumer dropped while active
                    // cancels itself in the background, racing the channel's
                    // close (lapin logs that race as an error).
                    let _ = session.replies.basic_cancel(reply_tag, BasicCancelOptions::default()).await;
                    return;
                }
            }
        }
        poller.abort();
        warn!(node = %session.node, "connection to RabbitMQ lost, connecting to a node that answers");
        if let Some(session) = inner.take_session() {
            dnet_amqp::close(&session.connection, 320, "reconnecting").await;
        }
        inner.fail_session_calls(generation);
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

/// Whether `error` is a channel's (an AMQP soft error), not the connection's.
fn is_channel_error(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Soft(_))
    )
}

async fn wait_for_connection_error(events: impl futures::Stream<Item = lapin::Event> + Unpin) {
    let mut events = events;
    while let Some(event) = events.next().await {
        match event {
            // A channel's error (the broker closing the publish channel on a
            // message it refuses) is not the connection's: the channel is reopened.
            lapin::Event::Error(error) if is_channel_error(&error) => {
                debug!(%error, "a RabbitMQ channel error; the connection stays");
            }
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
