//! Test harness: transmission units started in-process on 127.0.0.1:0, and
//! test workers that are real consumers on the real RabbitMQ.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dnet_common::amqp::{computation_queue_arguments, computation_queue_options};
use dnet_proto::{ComputationRequest, ComputationResponse, DNetClient};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use transmission_unit::config::Config;

/// The broker the tests use: `DNET_TEST_AMQP`, else the local RabbitMQ.
pub fn amqp_uri() -> String {
    std::env::var("DNET_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A queue name no other test uses.
pub fn random_queue() -> String {
    format!("dnet-test-{}", uuid::Uuid::new_v4())
}

/// Deletes a test queue (queues are declared non-auto-delete, as the original).
pub async fn delete_queue(queue: &str) {
    let connection = connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let _ = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
    let _ = connection.close(200, "test done".into()).await;
}

pub async fn connect() -> Connection {
    Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ must run at {} for these tests: {e}", amqp_uri()))
}

/// A transmission unit running in this process.
pub struct Unit {
    pub address: SocketAddr,
    pub metrics_address: SocketAddr,
    pub name: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Unit {
    /// Starts a unit on `queue`; `extra` are more command-line flags.
    pub async fn start(queue: &str, extra: &[&str]) -> Unit {
        let unit = Unit::spawn(queue, extra).await;
        unit.wait_until(ServingStatus::Serving).await;
        unit
    }

    /// Starts a unit serving TLS (`extra` holds the TLS flags). Its health
    /// needs a TLS client to read, so this waits for the port, then for the
    /// broker session, which takes well under a second on loopback.
    pub async fn start_tls(queue: &str, extra: &[&str]) -> Unit {
        let unit = Unit::spawn(queue, extra).await;
        while tokio::net::TcpStream::connect(unit.address).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        unit
    }

    async fn spawn(queue: &str, extra: &[&str]) -> Unit {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind metrics");
        let address = listener.local_addr().expect("address");
        let metrics_address = metrics_listener.local_addr().expect("metrics address");
        let name = format!("unit-{}", address.port());
        let uri = amqp_uri();
        let mut args = vec!["transmission-unit", "-q", queue, "--unit-name", &name];
        if !extra.contains(&"-a") {
            args.extend(["-a", &uri]);
        }
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).expect("valid flags");
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            transmission_unit::server::run(listener, Some(metrics_listener), config, shutdown)
                .await
                .expect("unit runs");
        });
        Unit {
            address,
            metrics_address,
            name,
            stop,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        self.address.to_string()
    }

    pub async fn client(&self) -> DNetClient<Channel> {
        DNetClient::connect(format!("http://{}", self.address))
            .await
            .expect("connect to unit")
    }

    /// Waits (up to 20 s) until the health service reports `status`.
    pub async fn wait_until(&self, status: ServingStatus) {
        wait_for_health(self.address, status).await;
    }

    /// The value of one un-labelled metric from /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let mut stream = tokio::net::TcpStream::connect(self.metrics_address)
            .await
            .expect("metrics");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .expect("request");
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("response");
        text.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// What a test worker does with a request.
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
pub struct Worker {
    connection: Arc<Connection>,
    task: JoinHandle<()>,
}

impl Worker {
    pub async fn start<F>(queue: &str, prefetch: u16, behaviour: F) -> Worker
    where
        F: Fn(ComputationRequest) -> Behaviour + Send + Sync + 'static,
    {
        let connection = Arc::new(connect().await);
        let channel = connection.create_channel().await.expect("channel");
        channel
            .queue_declare(queue.into(), computation_queue_options(), computation_queue_arguments())
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
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
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
        Worker { connection, task }
    }

    pub async fn stop(self) {
        let _ = self.connection.close(200, "test worker done".into()).await;
        self.task.abort();
    }
}

/// A reply as a worker of exit `exit` would send it for SUCCESS.
pub fn success(exit: u64, result: Vec<u8>) -> ComputationResponse {
    ComputationResponse {
        status: dnet_proto::StatusCode::Success as i32,
        data: Some(dnet_proto::Data::Result(result)),
        exit_layer: exit,
        confidence: 0.95,
        hops: vec![dnet_proto::HopRecord {
            exit_layer: exit,
            compute_us: 100,
            ..Default::default()
        }],
    }
}

/// A NOT_SUCCESS reply handing `x` on with `start_layer = exit`.
pub fn not_success(exit: u64, x: Vec<u8>) -> ComputationResponse {
    ComputationResponse {
        status: dnet_proto::StatusCode::NotSuccess as i32,
        data: Some(dnet_proto::Data::NextRequest(ComputationRequest {
            start_layer: exit,
            x,
        })),
        exit_layer: exit,
        confidence: 0.5,
        hops: vec![dnet_proto::HopRecord {
            exit_layer: exit,
            compute_us: 100,
            ..Default::default()
        }],
    }
}

/// The `transmission-unit` binary on 127.0.0.1:`port` for `queue`, as its own
/// process; returns it and its address once it reports SERVING.
pub async fn spawn_binary(queue: &str) -> (tokio::process::Child, SocketAddr) {
    let port = free_port().await;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_transmission-unit"))
        .args(["-l", &format!("127.0.0.1:{port}"), "-a", &amqp_uri(), "-q", queue])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start the transmission-unit binary");
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_health(address, ServingStatus::Serving).await;
    (child, address)
}

/// A port nothing listens on (bound, then released).
pub async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address").port()
}

/// A gRPC health client for a unit at `address`.
pub async fn health_client(address: SocketAddr) -> Option<HealthClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    Some(HealthClient::new(channel))
}

/// The health status a unit at `address` reports for `unit.DNet`.
pub async fn health(address: SocketAddr) -> Option<ServingStatus> {
    let mut client = health_client(address).await?;
    let answer = client
        .check(HealthCheckRequest {
            service: "unit.DNet".into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(answer.into_inner().status).ok()
}

/// Waits (up to 20 s) until the unit at `address` reports `status`.
pub async fn wait_for_health(address: SocketAddr, status: ServingStatus) {
    for _ in 0..200 {
        if health(address).await == Some(status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("unit at {address} never reported {status:?}");
}
