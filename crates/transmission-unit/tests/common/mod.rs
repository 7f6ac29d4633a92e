//! The transmission unit's own test pieces: a scripted worker (a real
//! consumer on the real broker, answering as the test decides) and replies
//! shaped as a computation unit sends them. Programs, queues and waiting come
//! from `dnet-testkit`.
#![allow(dead_code)] // each test file uses a different part

use std::sync::Arc;
use std::time::Duration;

use dnet_amqp::{QueueContract, QueueType};

/// The classic queue's declare, as the transmission unit makes it by default.
pub const CLASSIC: QueueContract = QueueContract {
    queue_type: QueueType::Classic,
    max_attempts: 3,
};
use dnet_proto::{ComputationRequest, ComputationResponse};
use dnet_testkit::Broker;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use prost::Message;
use tokio::task::JoinHandle;

/// A request with an opaque `x` (the transmission unit never decodes tensors).
pub fn request(start_layer: u64, x: &[u8]) -> ComputationRequest {
    ComputationRequest {
        start_layer,
        x: x.to_vec().into(),
        ..ComputationRequest::default()
    }
}

/// What a scripted worker does with a request.
pub enum Behaviour {
    /// Publish this reply, then ack.
    Reply(ComputationResponse),
    /// Wait, then publish this reply and ack (a slow model).
    ReplyAfter(Duration, ComputationResponse),
    /// Close the connection without replying or acking, as a crashed worker.
    Die,
    /// Keep the message unacked and never reply.
    Hold,
}

/// A real consumer on the computation queue, answering as the test decides.
/// Its connection closes when it is stopped or dropped.
pub struct Worker {
    connection: Arc<Connection>,
    task: JoinHandle<()>,
    /// The properties of every delivery, in arrival order.
    pub properties: Arc<std::sync::Mutex<Vec<BasicProperties>>>,
}

impl Worker {
    pub async fn start<F>(broker: &Broker, queue: &str, prefetch: u16, behaviour: F) -> Worker
    where
        F: Fn(ComputationRequest) -> Behaviour + Send + Sync + 'static,
    {
        Worker::start_on(broker, queue, CLASSIC, prefetch, behaviour).await
    }

    /// [`Worker::start`] on a queue declared as `contract` says (e.g. quorum).
    pub async fn start_on<F>(
        broker: &Broker,
        queue: &str,
        contract: QueueContract,
        prefetch: u16,
        behaviour: F,
    ) -> Worker
    where
        F: Fn(ComputationRequest) -> Behaviour + Send + Sync + 'static,
    {
        let connection = Arc::new(
            Connection::connect(&broker.uri, ConnectionProperties::default())
                .await
                .unwrap_or_else(|e| panic!("RabbitMQ must run at {} for these tests: {e}", broker.uri)),
        );
        let channel = connection.create_channel().await.expect("channel");
        channel
            .queue_declare(queue.into(), contract.options(), contract.arguments())
            .await
            .expect("declare with the transmission unit's arguments");
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let worker_connection = Arc::clone(&connection);
        let properties = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&properties);
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                seen.lock().expect("lock").push(delivery.properties.clone());
                let request = ComputationRequest::decode(delivery.data.as_slice()).expect("a ComputationRequest");
                let reply = match behaviour(request) {
                    Behaviour::Reply(reply) => reply,
                    Behaviour::ReplyAfter(wait, reply) => {
                        tokio::time::sleep(wait).await;
                        reply
                    }
                    Behaviour::Die => {
                        let _ = worker_connection.close(320, "test worker dies".into()).await;
                        return;
                    }
                    Behaviour::Hold => continue,
                };
                let reply_to = delivery.properties.reply_to().clone().expect("reply_to");
                let correlation_id = delivery.properties.correlation_id().clone().expect("correlation_id");
                channel
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &reply.encode_to_vec(),
                        BasicProperties::default().with_correlation_id(correlation_id),
                    )
                    .await
                    .expect("publish reply");
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
            }
        });
        Worker {
            connection,
            task,
            properties,
        }
    }

    pub async fn stop(self) {
        let _ = self.connection.close(200, "test worker done".into()).await;
        self.task.abort();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reply as a worker of exit `exit` would send it for SUCCESS.
pub fn success(exit: u64, result: impl Into<dnet_proto::Bytes>) -> ComputationResponse {
    ComputationResponse {
        status: dnet_proto::StatusCode::Success as i32,
        data: Some(dnet_proto::Data::Result(result.into())),
        exit_layer: exit,
        confidence: 0.95,
        hops: vec![dnet_proto::HopRecord {
            exit_layer: exit,
            compute_us: 100,
            ..Default::default()
        }],
        ..ComputationResponse::default()
    }
}

/// A NOT_SUCCESS reply handing `x` on with `start_layer = exit`.
pub fn not_success(exit: u64, x: impl Into<dnet_proto::Bytes>) -> ComputationResponse {
    ComputationResponse {
        status: dnet_proto::StatusCode::NotSuccess as i32,
        data: Some(dnet_proto::Data::NextRequest(ComputationRequest {
            start_layer: exit,
            x: x.into(),
            ..ComputationRequest::default()
        })),
        exit_layer: exit,
        confidence: 0.5,
        hops: vec![dnet_proto::HopRecord {
            exit_layer: exit,
            compute_us: 100,
            ..Default::default()
        }],
        ..ComputationResponse::default()
    }
}

/// Publishes `count` small messages straight to `queue` (declared as the
/// unit declares it), with confirms: requests nobody consumes.
pub async fn publish_raw(broker: &Broker, queue: &str, count: usize) {
    let connection = Connection::connect(&broker.uri, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    channel
        .queue_declare(queue.into(), CLASSIC.options(), CLASSIC.arguments())
        .await
        .expect("declare");
    for _ in 0..count {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                b"waiting",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
    }
    let _ = connection.close(200, "done".into()).await;
}
