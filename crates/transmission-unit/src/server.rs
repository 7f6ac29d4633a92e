//! `serve`: the gRPC edge of a unit on an already-bound listener: `unit.DNet`,
//! health, reflection, TLS, admission, metrics, and draining on shutdown,
//! whatever backend computes the unit's exit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dnet_proto::{DNetServer, FILE_DESCRIPTOR_SET};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::backend::Backend;
use crate::config::EdgeArgs;
use crate::error;
use crate::metrics::Metrics;
use crate::next_unit::NextUnit;
use crate::service::{ServiceSettings, UnitService};
use crate::tls;
use dnet_common::http2;

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

/// Binds `--listen-address` and, when given, `--metrics-address`.
///
/// # Errors
/// An address that cannot be bound, naming the flag.
pub async fn bind(args: &EdgeArgs) -> Result<(TcpListener, Option<TcpListener>), ServeError> {
    let bind = |address: String, flag: &'static str| async move {
        TcpListener::bind(&address)
            .await
            .map_err(|e| ServeError::Config(format!("cannot listen on {address} ({flag}): {e}")))
    };
    let listener = bind(args.listen_address.clone(), "--listen-address").await?;
    let metrics = match &args.observability.metrics_address {
        Some(address) => Some(bind(address.clone(), "--metrics-address").await?),
        None => None,
    };
    Ok((listener, metrics))
}

/// What `serve` needs besides the backend: the gRPC settings, the unit's
/// name, its metrics and the registry they are exported from.
pub struct Edge {
    pub args: EdgeArgs,
    pub unit_name: String,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
}

/// Serves `unit.DNet` on `listener` with `backend` computing this unit's exit
/// (and metrics, `/livez` and `/readyz` on `metrics_listener`) until
/// `shutdown` completes, then drains in-flight calls for up to the grace
/// period and closes the backend.
///
/// # Errors
/// A bad `--next-address` or TLS file, or the gRPC server failing.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    edge: Edge,
    backend: B,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let Edge {
        args: config,
        unit_name,
        metrics,
        registry,
    } = edge;
    let local_address = listener.local_addr().ok();
    let next = match config.next_address.as_deref().filter(|a| !a.is_empty()) {
        Some(address) => {
            let tls = tls::next(&config, address).map_err(ServeError::Config)?;
            let live = metrics.next_addresses.clone();
            Some(
                NextUnit::new(address, config.max_message_bytes, tls, live)
                    .await
                    .map_err(ServeError::Config)?,
            )
        }
        None => None,
    };
    let server_tls = tls::server(&config).map_err(ServeError::Config)?;
    let ready = backend.ready();
    let backend = Arc::new(backend);
    let closer = Arc::clone(&backend);
    let stop_metrics = CancellationToken::new();
    if let Some(metrics_listener) = metrics_listener {
        let stop = stop_metrics.clone();
        tokio::spawn(dnet_common::metrics_http::serve(
            metrics_listener,
            Arc::new(registry),
            // Ready as the gRPC health of unit.DNet: while the backend can compute.
            ready.clone(),
            async move {
                stop.cancelled().await;
            },
        ));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(follow_readiness(health.clone(), ready));
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
    let service = DNetServer::new(UnitService::new(backend, next, settings, Arc::clone(&metrics)))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);

    info!(
        listen = %local_address.map_or_else(|| "?".to_owned(), |a| a.to_string()),
        unit = %unit_name,
        next = config.next_address.as_deref().unwrap_or("none"),
        max_in_flight,
        max_queue = config.max_queue,
        "serving"
    );
    let stop_accepting = CancellationToken::new();
    // With an incoming stream of our own, socket options are set here, not on the builder.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = Server::builder();
    if let Some(server_tls) = server_tls {
        builder = builder.tls_config(server_tls)?;
    }
    if !config.max_connection_age.is_zero() {
        builder = builder
            .max_connection_age(config.max_connection_age)
            .max_connection_age_grace(config.max_connection_age_grace);
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
        .max_frame_size(Some(http2::MAX_FRAME))
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
            info!(grace_s = config.shutdown_grace.as_secs_f64(), in_flight = metrics.in_flight.get(),
                "no longer accepting calls, draining");
            stop_accepting.cancel();
            match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    warn!(abandoned = metrics.in_flight.get(), "grace period over, abandoning calls in flight");
                    Ok(())
                }
            }
        }
    };
    health_task.abort();
    stop_metrics.cancel();
    closer.close().await;
    info!("stopped");
    served.map_err(ServeError::from)
}

/// Mirrors the backend's readiness into the health of `unit.DNet`: SERVING
/// while it can compute. The server's own entry `""` (liveness) stays
/// SERVING until shutdown, so a broker outage does not get the pod restarted.
async fn follow_readiness(health: tonic_health::server::HealthReporter, mut ready: watch::Receiver<bool>) {
    loop {
        let status = if *ready.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status(SERVICE_NAME, status).await;
        if ready.changed().await.is_err() {
            return;
        }
    }
}
