//! A private RabbitMQ cluster: three nodes of the suite's own on this
//! machine (own node names, AMQP and distribution ports, data folders; the
//! one Erlang cookie of the `rabbitmq` user), joined, stopped and removed
//! on `Drop`. The machine's RabbitMQ is never touched. Starting takes about
//! a minute on a slow machine.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::broker::{Broker, PrivateBroker};

/// How long a node may take to come back after a kill or a stop.
pub const NODE_BACK_WITHIN: Duration = Duration::from_secs(90);

/// A cluster of private nodes; node 0 is the one the others joined.
#[derive(Debug)]
pub struct PrivateCluster {
    nodes: Vec<PrivateBroker>,
}

impl PrivateCluster {
    /// Starts `size` nodes and joins them into one cluster.
    ///
    /// # Errors
    /// A node does not start, or does not join.
    pub fn start(size: usize) -> anyhow::Result<PrivateCluster> {
        let started = Instant::now();
        let handles: Vec<_> = (0..size).map(|_| std::thread::spawn(PrivateBroker::start)).collect();
        let mut nodes = Vec::new();
        for handle in handles {
            nodes.push(
                handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("starting a node panicked"))??,
            );
        }
        let first = nodes[0].node_name().to_owned();
        for node in &nodes[1..] {
            let ctl = node.broker();
            ctl.rabbitmqctl(&["stop_app"])?;
            ctl.rabbitmqctl(&["join_cluster", &first])
                .with_context(|| format!("{} cannot join {first}", node.node_name()))?;
            ctl.rabbitmqctl(&["start_app"])?;
        }
        let cluster = PrivateCluster { nodes };
        let members = cluster.running_nodes()?;
        if members.len() != size {
            bail!("the cluster runs {} of {size} nodes: {members:?}", members.len());
        }
        eprintln!(
            "[testkit] private RabbitMQ cluster of {size} nodes up in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            cluster.uris()
        );
        Ok(cluster)
    }

    /// Node `index`.
    ///
    /// # Panics
    /// No such node.
    #[must_use]
    pub fn node(&self, index: usize) -> &PrivateBroker {
        &self.nodes[index]
    }

    /// The number of nodes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has nodes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's URI, comma-separated, starting with node `first` (as a
    /// program's `-a` takes them).
    #[must_use]
    pub fn uris_from(&self, first: usize) -> String {
        (0..self.nodes.len())
            .map(|i| self.nodes[(first + i) % self.nodes.len()].broker().uri.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's URI, comma-separated.
    #[must_use]
    pub fn uris(&self) -> String {
        self.uris_from(0)
    }

    /// The node whose AMQP listener is `host_port` (as `dnet_amqp_node` names it).
    #[must_use]
    pub fn index_of(&self, host_port: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|node| node.broker().host_port().as_deref() == Some(host_port))
    }

    /// A node that answers rabbitmqctl, for cluster-wide listings.
    ///
    /// # Errors
    /// None answers.
    pub fn any_up(&self) -> anyhow::Result<&Broker> {
        self.nodes
            .iter()
            .find(|node| node.is_up())
            .map(PrivateBroker::broker)
            .context("no node of the cluster answers")
    }

    /// The cluster's running nodes, as a running node sees them.
    ///
    /// # Errors
    /// No node answers.
    pub fn running_nodes(&self) -> anyhow::Result<Vec<String>> {
        let status = self.any_up()?.rabbitmqctl(&["cluster_status", "--formatter", "json"])?;
        let parsed: serde_json::Value = serde_json::from_str(&status).context("cluster_status JSON")?;
        Ok(parsed["running_nodes"]
            .as_array()
            .map(|nodes| nodes.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
            .unwrap_or_default())
    }

    /// The node leading quorum queue `queue`, as the cluster says.
    ///
    /// # Errors
    /// No node answers, or the queue is not listed with a leader.
    pub fn leader_of(&self, queue: &str) -> anyhow::Result<usize> {
        let listing =
            self.any_up()?
                .rabbitmqctl(&["list_queues", "--quiet", "--no-table-headers", "name", "leader"])?;
        let leader = listing
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(name, _)| *name == queue)
            .map(|(_, leader)| leader.trim().to_owned())
            .with_context(|| format!("queue {queue} is not listed with a leader:\n{listing}"))?;
        self.nodes
            .iter()
            .position(|node| node.node_name() == leader)
            .with_context(|| format!("leader {leader} is not a node of this cluster"))
    }

    /// Waits until stopping node `index` would leave every quorum queue a
    /// majority (`rabbitmq-queues check_if_node_is_quorum_critical`: a node
    /// that just came back is critical until its replicas have caught up),
    /// as an operator waits before stopping the next node.
    ///
    /// # Errors
    /// Still critical after `limit`.
    pub fn wait_until_not_critical(&self, index: usize, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let node = self.nodes[index].broker();
        while started.elapsed() < limit {
            if node
                .tool("rabbitmq-queues", &["check_if_node_is_quorum_critical"])
                .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!("node {index} was still quorum critical after {limit:?}")
    }

    /// Waits until every node runs in the cluster again (after a restart).
    ///
    /// # Errors
    /// Not within `limit`.
    pub fn wait_until_whole(&self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.running_nodes().is_ok_and(|nodes| nodes.len() == self.nodes.len()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!(
            "the cluster did not run all {} nodes within {limit:?}",
            self.nodes.len()
        )
    }
}
