//! `run`: the transmission unit, the gRPC edge (`dnet_edge::server::serve`) in front of
//! the unit's RabbitMQ queue (`queue_client`).

use std::future::Future;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::info;

use dnet_edge::metrics::Metrics;
use dnet_edge::server::{serve, Edge, ServeError};

use crate::config::Config;
use crate::queue_client::{QueueClient, QueueSettings};

/// Serves the transmission unit on `listener` until `shutdown` completes
/// (see [`serve`]).
///
/// # Errors
/// A bad `--amqp-ca`, `--next-address` or TLS file, or the gRPC server failing.
pub async fn run(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let unit_name = config.edge.unit_name(port);
    let tls_ca = config
        .amqp_ca
        .as_deref()
        .map(dnet_amqp::read_ca)
        .transpose()
        .map_err(ServeError::Config)?;
    let uri = config
        .amqp_credentials
        .apply(&config.amqp_address)
        .map_err(|e| ServeError::Config(format!("--amqp-address: {e}")))?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let queue = QueueClient::start(QueueSettings {
        uri: uri.clone(),
        queue: config.queue_name.clone(),
        connection_name: format!("transmission-unit {unit_name}"),
        tls_ca,
        max_message_bytes: config.edge.max_message_bytes,
        pending_gauge: metrics.pending_replies.clone(),
        late_replies: metrics.late_replies.clone(),
        waiting_gauge: metrics.queue_waiting.clone(),
    });
    info!(queue = %config.queue_name, broker = %dnet_amqp::redact(&uri), "transmission unit starting");
    let edge = Edge {
        args: config.edge,
        unit_name,
        metrics,
        registry,
        exit_threshold: None,
        // Learnt from the first reply its workers computed.
        own_exit: None,
    };
    serve(listener, metrics_listener, edge, queue, shutdown).await
}
