//! The transmission unit's command line: the gRPC side of any unit
//! (`dnet_edge::config::EdgeArgs`) and its broker. Every flag also reads a
//! `DNET_*` variable.

use std::path::PathBuf;

use clap::Parser;
use dnet_amqp::credentials::AmqpCredentials;
use dnet_edge::config::EdgeArgs;
/// The gRPC front of a DNet unit: relays Compute calls to the unit's
/// computation units through a RabbitMQ queue, and forwards answers that are
/// not confident enough (NOT_SUCCESS) to the next unit.
#[derive(Clone, Debug, Parser)]
#[command(name = "transmission-unit", version, about, long_about = None)]
pub struct Config {
    #[command(flatten)]
    pub edge: EdgeArgs,

    /// RabbitMQ address (amqp:// or amqps://user:password@host:port/vhost).
    #[arg(short = 'a', long, env = "DNET_AMQP_ADDRESS", default_value = "amqp://localhost")]
    pub amqp_address: String,

    /// Queue the computation units of this unit consume.
    #[arg(short = 'q', long, env = "DNET_QUEUE_NAME", default_value = "ComputationQueue")]
    pub queue_name: String,

    /// CA (PEM) to trust for an amqps:// broker, besides the system's CAs.
    #[arg(long, env = "DNET_AMQP_CA")]
    pub amqp_ca: Option<PathBuf>,

    #[command(flatten)]
    pub amqp_credentials: AmqpCredentials,
}
