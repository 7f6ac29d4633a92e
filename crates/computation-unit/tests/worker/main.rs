//! The computation unit (its binary) on the real broker, behind real
//! transmission units; one file per subject.

#[path = "../support/mod.rs"]
mod support;

mod answers;
mod bad_input;
mod batching;
mod deadlines;
mod delivery;
mod lifecycle;
mod poison;

use std::time::Duration;

use dnet_proto::ComputationResponse;
use dnet_testkit::{wait_for, Broker, ComputationUnit, TestQueue, TransmissionUnit};

pub const SEED: u64 = 11;
/// How long a test waits for a state it needs before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub async fn unit(broker: &Broker, queue: &TestQueue, extra: &[&str]) -> TransmissionUnit {
    TransmissionUnit::start(broker, queue.name(), extra)
        .await
        .expect("transmission unit starts")
}

pub async fn worker(broker: &Broker, queue: &TestQueue, exit: u8, extra: &[&str]) -> ComputationUnit {
    ComputationUnit::start(broker, queue.name(), exit, SEED, extra)
        .await
        .expect("computation unit starts")
}

/// Waits until `calls` requests are published (the unit waits for their
/// replies) and the queue has nothing ready and one consumer: the worker
/// holds them all.
pub async fn wait_for_taken(unit: &TransmissionUnit, calls: u32) {
    wait_for("the worker to take every request", PATIENCE, || async {
        let published = unit.metrics().await.ok()?.value("dnet_pending_replies").ok()?;
        (published == f64::from(calls) && unit.qstatus().await.ok()? == (0, 1)).then_some(())
    })
    .await
    .expect("taken");
}

/// Each worker's published replies, once they add up to at least `total`.
/// A worker counts a reply when the broker confirms it, which can be after
/// the caller already holds the answer: read the counters only then.
pub async fn replies_reaching(workers: &[&ComputationUnit], total: f64) -> Vec<f64> {
    wait_for("the workers to count their replies", PATIENCE, || async {
        let mut replies = Vec::new();
        for worker in workers {
            replies.push(worker.metrics().await.ok()?.sum("dnet_worker_replies_total").ok()?);
        }
        (replies.iter().sum::<f64>() >= total).then_some(replies)
    })
    .await
    .expect("replies counted")
}

/// Publishes `body` straight onto `queue` with the given properties.
pub async fn publish_raw(channel: &lapin::Channel, queue: &str, body: &[u8], properties: lapin::BasicProperties) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

/// A connection, a channel with confirms, and an exclusive reply queue with
/// its consumer: publishing raw requests and reading their replies.
pub struct RawClient {
    connection: lapin::Connection,
    channel: lapin::Channel,
    reply_to: String,
    replies: lapin::Consumer,
}

impl RawClient {
    pub async fn new(broker: &Broker) -> RawClient {
        use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions, QueueDeclareOptions};
        let connection = lapin::Connection::connect(&broker.uri, lapin::ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let replies = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("reply queue");
        let reply_to = replies.name().to_string();
        let replies = channel
            .basic_consume(
                reply_to.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("consume replies");
        RawClient {
            connection,
            channel,
            reply_to,
            replies,
        }
    }

    /// Publishes `body` to `queue` with this client's reply queue, `id` and `headers`.
    pub async fn send(&self, queue: &TestQueue, body: &[u8], id: &str, headers: lapin::types::FieldTable) {
        let properties = lapin::BasicProperties::default()
            .with_reply_to(self.reply_to.as_str().into())
            .with_correlation_id(id.into())
            .with_headers(headers);
        publish_raw(&self.channel, queue.name(), body, properties).await;
    }

    /// The next reply's correlation id and response, if one comes within `limit`.
    pub async fn reply(&mut self, limit: Duration) -> Option<(String, ComputationResponse)> {
        use futures::StreamExt;
        use prost::Message;
        let delivery = tokio::time::timeout(limit, self.replies.next()).await.ok()??.ok()?;
        let id = delivery.properties.correlation_id().clone()?.to_string();
        Some((id, ComputationResponse::decode(delivery.data.as_slice()).ok()?))
    }
}

/// Milliseconds since the Unix epoch, `offset_ms` from now.
pub fn unix_ms_from_now(offset_ms: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    now + offset_ms
}
