//! `serve`: the gRPC edge of a unit on an already-bound listener: `unit.DNet`,
//! health, reflection, TLS, admission, metrics, and draining on shutdown,
//! whatever backend computes the unit's exit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dnet_proto::{DNetServer, FILE_DESCRIPTOR_SET};
use futures::Stream;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::agreement::Agreement;
use crate::backend::Backend;
use crate::config::EdgeArgs;
use crate::connections;
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
    /// The program's `dnet_exit_threshold`, when it exports one (a direct
    /// unit); otherwise the edge registers its own when it moves the
    /// threshold (`--target-agreement`).
    pub exit_threshold: Option<Gauge<f64, AtomicU64>>,
    /// This unit's exit and threshold, when the program knows them (a
    /// direct unit: its flags); otherwise the live calibration learns them
    /// from the first reply its computation computed.
    pub own_exit: Option<OwnExit>,
}

/// A unit's exit, the threshold its configuration gives it, and which
/// configuration (for the log).
#[derive(Clone, Debug)]
pub struct OwnExit {
    pub exit: u64,
    pub threshold: f64,
    pub source: String,
}

/// Serves `unit.DNet` on `listener` with `backend` computing this unit's exit
/// (and metrics, `/livez` and `/readyz` on `metrics_listener`) until
/// `shutdown` completes, then drains in-flight calls for up to the grace
/// period and closes the backend.
///
/// # Errors
/// Contradicting settings, a bad `--next-address` or TLS file, or the gRPC
/// server failing.
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
        mut registry,
        exit_threshold,
        own_exit,
    } = edge;
    config.check().map_err(ServeError::Config)?;
    let next = next_unit(&config, &metrics).await?;
    let agreement = agreement(&config, &mut registry, exit_threshold, &metrics);
    if let (Some(agreement), Some(own)) = (&agreement, own_exit) {
        agreement.start(own.exit, own.threshold, &own.source);
    }
    let ready = backend.ready();
    let backend = Arc::new(backend);
    // Ready as the gRPC health of unit.DNet: while the backend can compute.
    let stop_metrics = serve_metrics(metrics_listener, registry, ready.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(follow_readiness(health.clone(), ready));
    let service = unit_service(
        &config,
        unit_name.clone(),
        Arc::clone(&backend),
        next,
        &metrics,
        agreement,
    );
    let waiting = Arc::clone(&backend);
    let admission = Admission::new(
        config.max_in_flight(),
        config.max_calls_per_connection(),
        config.max_queue,
        Arc::new(move || waiting.waiting()),
        Arc::clone(&metrics),
    );
    log_serving(&config, &listener, &unit_name);
    // With an incoming stream of our own, socket options are set here, not on the builder.
    let incoming = connections::limit(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        config.max_connections(),
        (!config.max_connection_age.is_zero()).then(|| {
            config
                .max_connection_age
                .saturating_add(config.max_connection_age_grace)
        }),
        metrics.connections.clone(),
        metrics.connections_refused.clone(),
    );
    let stop_accepting = CancellationToken::new();
    let server = grpc_server(
        &config,
        admission,
        service,
        health_service,
        incoming,
        stop_accepting.clone(),
    )?;

    tokio::pin!(server);
    let served = tokio::select! {
        served = &mut server => served,
        () = shutdown => {
            health_task.abort();
            stop_health(health).await;
            stop_accepting.cancel();
            drain(server, config.shutdown_grace, &metrics).await
        }
    };
    health_task.abort();
    stop_metrics.cancel();
    let closing = std::time::Instant::now();
    backend.close().await;
    info!(close_ms = closing.elapsed().as_millis() as u64, "stopped");
    served.map_err(ServeError::from)
}

/// Serves the metrics, `/livez` and `/readyz` on `listener` (if given)
/// until the returned token is cancelled.
fn serve_metrics(listener: Option<TcpListener>, registry: Registry, ready: watch::Receiver<bool>) -> CancellationToken {
    let stop = CancellationToken::new();
    if let Some(listener) = listener {
        let stopped = stop.clone();
        tokio::spawn(dnet_common::metrics_http::serve(
            listener,
            Arc::new(registry),
            ready,
            async move { stopped.cancelled().await },
        ));
    }
    stop
}

/// The agreement of this exit with the last, when shadow work measures it
/// (`--shadow-rate`), and its live calibration (`--target-agreement`).
fn agreement(
    config: &EdgeArgs,
    registry: &mut Registry,
    exit_threshold: Option<Gauge<f64, AtomicU64>>,
    metrics: &Metrics,
) -> Option<Arc<Agreement>> {
    let settings = config.agreement()?;
    let threshold = match exit_threshold {
        Some(gauge) => gauge,
        None => {
            let gauge = Gauge::<f64, AtomicU64>::default();
            if settings.target.is_some() {
                registry.register(
                    "dnet_exit_threshold",
                    "Threshold of this unit's exit, as --target-agreement holds it",
                    gauge.clone(),
                );
            }
            gauge
        }
    };
    Some(Arc::new(Agreement::new(settings, metrics.live.clone(), threshold)))
}

/// The `unit.DNet` service with its settings and message limits.
fn unit_service<B: Backend>(
    config: &EdgeArgs,
    unit_name: String,
    backend: Arc<B>,
    next: Option<NextUnit>,
    metrics: &Arc<Metrics>,
    agreement: Option<Arc<Agreement>>,
) -> DNetServer<UnitService<B>> {
    let settings = ServiceSettings {
        unit_name,
        default_timeout: config.timeout,
        max_deadline: config.max_deadline,
        forward_delay: Duration::from_millis(config.test_delay),
        retry_budget: config.retry_budget,
        answer_floor: config.answer_when_late.then_some(config.answer_floor),
        shadow_rate: config.shadow_rate as f32,
    };
    DNetServer::new(UnitService::new(
        backend,
        next,
        settings,
        Arc::clone(metrics),
        agreement,
    ))
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes)
}

/// The "serving" line: where, for which unit, and with which limits.
fn log_serving(config: &EdgeArgs, listener: &TcpListener, unit_name: &str) {
    info!(
        listen = %listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string()),
        unit = %unit_name,
        next = config.next_address.as_deref().unwrap_or("none"),
        max_in_flight = config.max_in_flight(),
        max_calls_per_connection = config.max_calls_per_connection(),
        max_connections = config.max_connections(),
        max_queue = config.max_queue,
        memory_bound_mib = config.memory_bound() >> 20,
        answer_when_late = config.answer_when_late,
        shadow_rate = config.shadow_rate,
        target_agreement = config.target_agreement,
        agreement_window = config.target_agreement.map(|_| config.agreement_window()),
        "serving"
    );
}

/// NOT_SERVING for everyone watching, then the end of their watches (other
/// units' balancers keep one open each): the drain waits for every open
/// call, and a watch never ends by itself.
async fn stop_health(mut health: tonic_health::server::HealthReporter) {
    health.set_service_status("", ServingStatus::NotServing).await;
    health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
    health.clear_service_status(SERVICE_NAME).await;
    health.clear_service_status("").await;
}

/// The client of `--next-address`, if given.
async fn next_unit(config: &EdgeArgs, metrics: &Metrics) -> Result<Option<NextUnit>, ServeError> {
    let Some(address) = config.next_address.as_deref().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let tls = tls::next(config, address).map_err(ServeError::Config)?;
    NextUnit::new(address, config.max_message_bytes, tls, metrics.next_addresses.clone())
        .await
        .map(Some)
        .map_err(ServeError::Config)
}

/// The gRPC server on `incoming` until `stop`: TLS, connection age, HTTP/2
/// windows, and the limits that hold before a call's message is read
/// (admission of every call, and of each connection's).
fn grpc_server<B: Backend>(
    config: &EdgeArgs,
    admission: Admission,
    service: DNetServer<UnitService<B>>,
    health: HealthServer<impl Health>,
    incoming: impl Stream<Item = std::io::Result<connections::Counted>> + Send + 'static,
    stop: CancellationToken,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>>, ServeError> {
    let mut builder = Server::builder();
    if let Some(server_tls) = tls::server(config).map_err(ServeError::Config)? {
        builder = builder.tls_config(server_tls)?;
    }
    if !config.max_connection_age.is_zero() {
        // The GOAWAY at the age; the close after the grace is `connections`'
        // (tonic sends no GOAWAY at all when given a grace).
        builder = builder.max_connection_age(config.max_connection_age);
    }
    Ok(builder
        // Streams beyond the call limits must reach the server to be refused
        // at once; at the stream limit itself HTTP/2 makes them wait in the client.
        .max_concurrent_streams(Some(config.max_calls_per_connection().saturating_mul(2)))
        .initial_stream_window_size(Some(http2::STREAM_WINDOW))
        .initial_connection_window_size(Some(http2::CONNECTION_WINDOW))
        .max_frame_size(Some(http2::MAX_FRAME))
        .layer(tower::util::MapResponseLayer::new(
            error::oversize_is_resource_exhausted,
        ))
        .layer(admission)
        .add_service(health)
        .add_service(reflection()?)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned()))
}

fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    ServeError,
> {
    Ok(tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?)
}

/// Waits for the calls in flight to end, at most `grace`, saying what it waits for.
async fn drain(
    server: Pin<&mut impl Future<Output = Result<(), tonic::transport::Error>>>,
    grace: Duration,
    metrics: &Metrics,
) -> Result<(), tonic::transport::Error> {
    let started = std::time::Instant::now();
    info!(
        grace_s = grace.as_secs_f64(),
        in_flight = metrics.calls_in_flight(),
        connections = metrics.connections.get(),
        "no longer accepting calls, draining the calls in flight"
    );
    match tokio::time::timeout(grace, server).await {
        Ok(served) => {
            info!(drain_ms = started.elapsed().as_millis() as u64, "drained");
            served
        }
        Err(_) => {
            warn!(
                abandoned = metrics.calls_in_flight(),
                "grace period over, abandoning calls in flight"
            );
            Ok(())
        }
    }
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
