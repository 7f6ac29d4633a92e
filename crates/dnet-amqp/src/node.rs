//! `dnet_amqp_node{node}`: 1 for the broker node a program is connected to
//! now, 0 for those it was on before; none at 1 while it has no node.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

/// The node a program is on, as a metric.
#[derive(Clone, Debug, Default)]
pub struct NodeMetric {
    family: Family<NodeLabel, Gauge>,
    current: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl NodeMetric {
    /// Registers `dnet_amqp_node` in `registry`.
    #[must_use]
    pub fn register(registry: &mut Registry) -> Self {
        let metric = Self::default();
        registry.register(
            "dnet_amqp_node",
            "The RabbitMQ node this program is connected to (1), and those it was on before (0)",
            metric.family.clone(),
        );
        metric
    }

    /// Now on `node`, or on none (`None`).
    pub fn set(&self, node: Option<&str>) {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(previous) = current.take() {
            self.family.get_or_create(&NodeLabel { node: previous }).set(0);
        }
        if let Some(node) = node {
            self.family.get_or_create(&NodeLabel { node: node.to_owned() }).set(1);
            *current = Some(node.to_owned());
        }
    }

    /// The node it is on now.
    #[must_use]
    pub fn current(&self) -> Option<String> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
