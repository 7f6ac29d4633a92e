//! `run`: the whole transmission unit on an already-bound listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dnet_proto::{DNetServer, FILE_DESCRIPTOR_SET};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::config::Config;
use crate::error;
use crate::http2;
use crate::metrics::Metrics;
use crate::next_unit::NextUnit;
use crate::queue_client::{QueueClient, QueueSettings};
use crate::service::{ServiceSettings, UnitService};
use crate::tls;

/// Health service name of the DNet service (readiness); `""` is the server itself (liveness).
const SERVICE_NAME: &str = "unit.DNet";

/// Why the unit could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the unit on `listener` (and metrics on `metrics_listener`) until
/// `shutdown` completes, then drains in-flight calls for up to the grace period.
///
/// # Errors
/// A bad `--next-address`, or the gRPC server failing.
pub async fn run(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let local_address = listener.local_addr().ok();
    let port = local_address.map(|a| a.port()).unwrap_or_default();
    let unit_name = config.unit_name(port);
    let next = config
        .next_address
        .as_deref()
        .filter(|a| !a.is_empty())
        .map(|address| NextUnit::new(address, config.max_message_bytes, tls::next(&config, address)?))
        .transpose()
        .map_err(ServeError::Config)?;
    let server_tls = tls::server(&config).map_err(ServeError::Config)?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let queue = QueueClient::start(QueueSettings {
        uri: config.amqp_address.clone(),
        queue: config.queue_name.clone(),
        connection_name: format!("transmission-unit {unit_name}"),
        tls_ca: config
            .amqp_ca
            .as_deref()
            .map(dnet_amqp::read_ca)
            .transpose()
            .map_err(ServeError::Config)?,
        max_message_bytes: config.max_message_bytes,
        pending_gauge: metrics.pending_replies.clone(),
        late_replies: metrics.late_replies.clone(),
        waiting_gauge: metrics.queue_waiting.clone(),
    });
    let stop_metrics = CancellationToken::new();
    if let Some(metrics_listener) = metrics_listener {
        let stop = stop_metrics.clone();
        tokio::spawn(dnet_common::metrics_http::serve(
            metrics_listener,
            Arc::new(registry),
            // Ready while the broker session is up, as the gRPC health of unit.DNet.
            queue.connected(),
            async move {
                stop.cancelled().await;
            },
        ));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(follow_broker_health(health.clone(), queue.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let max_in_flight = config.max_in_flight();
    let settings = ServiceSettings {
        unit_name: unit_name.clone(),
        default_timeout: config.timeout,
        forward_delay: Duration::from_millis(config.delay),
        max_in_flight,
        max_queue: config.max_queue,
        retry_budget: config.retry_budget,
    };
    let service = DNetServer::new(UnitService::new(queue.clone(), next, settings, metrics))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);

    info!(
        listen = %local_address.map_or_else(|| "?".to_owned(), |a| a.to_string()),
        unit = %unit_name,
        queue = %config.queue_name,
        next = config.next_address.as_deref().unwrap_or("none"),
        max_in_flight,
        max_queue = config.max_queue,
        "transmission unit serving"
    );
    let stop_accepting = CancellationToken::new();
    // With an incoming stream of our own, socket options are set here, not on the builder.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = Server::builder();
    if let Some(server_tls) = server_tls {
        builder = builder.tls_config(server_tls)?;
    }
    let server = builder
        .layer(tower::util::MapResponseLayer::new(
            error::oversize_is_resource_exhausted,
        ))
        // Bounds what one connection holds open, above the admission limit:
        // calls beyond --max-in-flight must reach the handler to be refused
        // at once; at the limit itself, HTTP/2 would make them wait in the client.
        .max_concurrent_streams(Some(max_in_flight.saturating_mul(2)))
        .initial_stream_window_size(Some(http2::STREAM_WINDOW))
        .initial_connection_window_size(Some(http2::CONNECTION_WINDOW))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop_accepting.clone().cancelled_owned());
    tokio::pin!(server);

    let served = tokio::select! {
        served = &mut server => served,
        () = shutdown => {
            health_task.abort();
            health.set_service_status("", ServingStatus::NotServing).await;
            health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
            info!(grace_s = config.shutdown_grace.as_secs_f64(), in_flight = queue.pending_calls(),
                "no longer accepting calls, draining");
            stop_accepting.cancel();
            match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    warn!(abandoned = queue.pending_calls(), "grace period over, abandoning calls in flight");
                    Ok(())
                }
            }
        }
    };
    health_task.abort();
    stop_metrics.cancel();
    queue.close().await;
    info!("transmission unit stopped");
    served.map_err(ServeError::from)
}

/// Mirrors the broker session into the health of `unit.DNet` (readiness):
/// SERVING while connected. The server's own entry `""` (liveness) stays
/// SERVING until shutdown, so a broker outage does not get the pod restarted.
async fn follow_broker_health(health: tonic_health::server::HealthReporter, queue: QueueClient) {
    let mut connected = queue.connected();
    loop {
        let status = if *connected.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status(SERVICE_NAME, status).await;
        if connected.changed().await.is_err() {
            return;
        }
    }
}
