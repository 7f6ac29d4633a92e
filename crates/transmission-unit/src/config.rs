//! The transmission unit's command line: the gRPC side of any unit
//! (`dnet_edge::config::EdgeArgs`) and its broker. Every flag also reads a
//! `DNET_*` variable.

use std::path::PathBuf;

use clap::Parser;
use dnet_amqp::credentials::AmqpCredentials;
use dnet_amqp::{QueueContract, QueueType};
use dnet_edge::config::EdgeArgs;
/// The gRPC front of a DNet unit: relays Compute calls to the unit's
/// computation units through a RabbitMQ queue, and forwards answers that are
/// not confident enough (NOT_SUCCESS) to the next unit.
#[derive(Clone, Debug, Parser)]
#[command(name = "transmission-unit", version, about, long_about = None)]
pub struct Config {
    #[command(flatten)]
    pub edge: EdgeArgs,

    /// RabbitMQ address (amqp:// or amqps://user:password@host:port/vhost);
    /// or several, comma-separated (a cluster's nodes; a name that resolves
    /// to several addresses counts as each): the unit publishes through one
    /// that answers and moves to another when it is lost, without restarting.
    #[arg(short = 'a', long, env = "DNET_AMQP_ADDRESS", default_value = "amqp://localhost")]
    pub amqp_address: String,

    /// The kind of queue: classic (the original's, on one node) or quorum
    /// (replicated over a cluster). Give what the unit's computation units
    /// give; a mismatch stops the unit at start, naming both.
    #[arg(long, env = "DNET_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic)]
    pub queue_type: QueueType,

    /// The computation units' --max-attempts: a quorum queue's delivery
    /// limit derives from it, and both sides declare the queue alike.
    #[arg(long, env = "DNET_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Queue the computation units of this unit consume.
    #[arg(short = 'q', long, env = "DNET_QUEUE_NAME", default_value = "ComputationQueue")]
    pub queue_name: String,

    /// CA (PEM) to trust for an amqps:// broker, besides the system's CAs.
    #[arg(long, env = "DNET_AMQP_CA")]
    pub amqp_ca: Option<PathBuf>,

    #[command(flatten)]
    pub amqp_credentials: AmqpCredentials,
}

impl Config {
    /// The broker URIs of `--amqp-address`, with `--amqp-user`/`--amqp-password` in each.
    ///
    /// # Errors
    /// An empty list, or an address that is not an amqp:// or amqps:// URI.
    pub fn amqp_uris(&self) -> Result<Vec<String>, String> {
        dnet_amqp::connect::split_addresses(&self.amqp_address, None)
            .and_then(|uris| uris.iter().map(|uri| self.amqp_credentials.apply(uri)).collect())
            .map_err(|e| format!("--amqp-address: {e}"))
    }

    /// What this unit declares its queue with.
    #[must_use]
    pub fn queue_contract(&self) -> QueueContract {
        QueueContract {
            queue_type: self.queue_type,
            max_attempts: self.max_attempts,
        }
    }
}
