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
    // Settings that contradict each other are refused before the broker is called.
    config.edge.check().map_err(ServeError::Config)?;
    let uris = config.amqp_uris().map_err(ServeError::Config)?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let node = dnet_amqp::node::NodeMetric::register(&mut registry);
    let refused_publishes = prometheus_client::metrics::counter::Counter::default();
    registry.register(
        "dnet_queue_refused_publishes",
        "Requests the broker refused (nack; a quorum queue without a majority) and the unit published again within their deadline",
        refused_publishes.clone(),
    );
    let brokers = dnet_amqp::connect::describe(&uris);
    let queue = QueueClient::start(QueueSettings {
        uris,
        queue: config.queue_name.clone(),
        contract: config.queue_contract(),
        node,
        refused_publishes,
        connection_name: format!("transmission-unit {unit_name}"),
        tls_ca,
        max_message_bytes: config.edge.max_message_bytes,
        pending_gauge: metrics.pending_replies.clone(),
        late_replies: metrics.late_replies.clone(),
        waiting_gauge: metrics.queue_waiting.clone(),
    });
    info!(queue = %config.queue_name, brokers = %brokers, queue_type = config.queue_type.as_str(), "transmission unit starting");
    let edge = Edge {
        args: config.edge,
        unit_name,
        metrics,
        registry,
        exit_threshold: None,
        // Learnt from the first reply its workers computed.
        own_exit: None,
    };
    // A setting the broker refuses (the queue's type, the message size)
    // stops the unit with why: no reconnect mends it.
    let refused = std::sync::Mutex::new(None);
    let stopping = async {
        tokio::select! {
            () = shutdown => {}
            why = queue.failed() => {
                *refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
            }
        }
    };
    if let Err(error) = serve(listener, metrics_listener, edge, queue.clone(), stopping).await {
        queue.close().await;
        return Err(error);
    }
    match refused.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
        Some(why) => Err(ServeError::Config(why)),
        None => Ok(()),
    }
}
