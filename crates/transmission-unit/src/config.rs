//! Command lines: `EdgeArgs`, the gRPC side of any unit (also taken by the
//! direct unit, `computation-unit serve`), and `Config`, the transmission
//! unit's (the gRPC side and its broker). Every flag also reads a `DNET_*`
//! variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use dnet_common::duration::parse_duration;
use dnet_common::telemetry::ObservabilityArgs;

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

/// Broker credentials apart from the URI, percent-encoded into it by the
/// program (any character is safe; a Secret can hold them as they are).
#[derive(Clone, Debug, Args)]
pub struct AmqpCredentials {
    /// RabbitMQ user, replacing the one in the broker address.
    #[arg(long, env = "DNET_AMQP_USER")]
    pub amqp_user: Option<String>,

    /// RabbitMQ password, replacing the one in the broker address.
    #[arg(long, env = "DNET_AMQP_PASSWORD", hide_env_values = true)]
    pub amqp_password: Option<String>,
}

impl AmqpCredentials {
    /// `uri` with these credentials in it.
    ///
    /// # Errors
    /// `uri` is not an amqp:// or amqps:// URI.
    pub fn apply(&self, uri: &str) -> Result<String, String> {
        dnet_amqp::with_credentials(uri, self.amqp_user.as_deref(), self.amqp_password.as_deref())
    }
}

/// How a unit serves gRPC: listening, forwarding to the next unit, deadlines,
/// TLS, admission, draining.
#[derive(Clone, Debug, Args)]
pub struct EdgeArgs {
    /// Address the gRPC server listens on.
    #[arg(short = 'l', long, env = "DNET_LISTEN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub listen_address: String,

    /// gRPC address (host:port) of the next unit; NOT_SUCCESS answers are
    /// forwarded there. A comma list, or a name that resolves to several
    /// addresses (a headless Service; resolved again every second), spreads
    /// the calls over every address that accepts connections. Without it,
    /// NOT_SUCCESS is returned to the caller.
    #[arg(short = 'n', long, env = "DNET_NEXT_ADDRESS")]
    pub next_address: Option<String>,

    /// Test only: milliseconds to wait before returning a forwarded answer,
    /// to simulate a slow link.
    #[arg(short = 'd', long, env = "DNET_DELAY", default_value_t = 0)]
    pub delay: u64,

    /// Deadline of a call whose caller set none (e.g. 500ms, 30s, 2m).
    #[arg(long, env = "DNET_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(flatten)]
    pub observability: ObservabilityArgs,

    /// Name of this unit in hop records and logs [default: host name and port].
    #[arg(long, env = "DNET_UNIT_NAME")]
    pub unit_name: Option<String>,

    /// Largest message accepted or sent, in bytes: gRPC calls and, in a
    /// transmission unit, its queue's messages.
    #[arg(long, env = "DNET_MAX_MESSAGE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "DNET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "DNET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require callers to present a certificate signed by this CA (PEM); needs --tls-cert.
    #[arg(long, env = "DNET_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Call the next unit over TLS, trusting this CA (PEM).
    #[arg(long, env = "DNET_NEXT_TLS_CA")]
    pub next_tls_ca: Option<PathBuf>,

    /// Name to verify in the next unit's certificate [default: the host of --next-address].
    #[arg(long, env = "DNET_NEXT_TLS_DOMAIN", requires = "next_tls_ca")]
    pub next_tls_domain: Option<String>,

    /// Client certificate (PEM) presented to the next unit; needs --next-tls-key.
    #[arg(long, env = "DNET_NEXT_TLS_CERT", requires_all = ["next_tls_key", "next_tls_ca"])]
    pub next_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --next-tls-cert.
    #[arg(long, env = "DNET_NEXT_TLS_KEY", requires = "next_tls_cert")]
    pub next_tls_key: Option<PathBuf>,

    /// Calls handled at once; more get RESOURCE_EXHAUSTED at once [default:
    /// as many as fit half the memory this process may use (cgroup limit, else
    /// the machine's) with a request and a reply of --max-message-bytes each,
    /// at most 1024].
    #[arg(long, env = "DNET_MAX_IN_FLIGHT", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: Option<u32>,

    /// Requests waiting to be computed (in the queue, read every 250 ms; in
    /// a direct unit, for its model) above which calls get RESOURCE_EXHAUSTED
    /// at once instead of joining them.
    #[arg(long, env = "DNET_MAX_QUEUE", default_value_t = 1000)]
    pub max_queue: u64,

    /// Retries of UNAVAILABLE (broker or next unit) within each call's
    /// deadline, as a percentage of calls (a retry budget, plus 10 retries
    /// per second); 0 turns retries off.
    #[arg(long, env = "DNET_RETRY_BUDGET", default_value_t = 10.0)]
    pub retry_budget: f32,

    /// Longest a client's connection is kept: past it the server asks the
    /// client to reconnect (HTTP/2 GOAWAY), so that long-lived clients spread
    /// over replicas added since (a scale-up or a rollout); 0s: never.
    #[arg(long, env = "DNET_MAX_CONNECTION_AGE", default_value = "5m", value_parser = parse_duration)]
    pub max_connection_age: Duration,

    /// How long calls on a connection past its age may take to finish.
    #[arg(long, env = "DNET_MAX_CONNECTION_AGE_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub max_connection_age_grace: Duration,

    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish.
    #[arg(long, env = "DNET_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// The most calls a transmission unit takes by default.
const MAX_IN_FLIGHT_CAP: u64 = 1024;

impl EdgeArgs {
    /// `--max-in-flight`, else what fits half the memory this process may
    /// use with two messages of `--max-message-bytes` per call.
    #[must_use]
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight.unwrap_or_else(|| {
            let per_call = 2 * self.max_message_bytes.max(1) as u64;
            let budget = dnet_common::resources::memory_limit_bytes().unwrap_or(1 << 30) / 2;
            u32::try_from((budget / per_call).clamp(1, MAX_IN_FLIGHT_CAP)).unwrap_or(1)
        })
    }

    /// The unit name for hop records: `--unit-name`, else `HOSTNAME:port`.
    #[must_use]
    pub fn unit_name(&self, port: u16) -> String {
        if let Some(name) = &self.unit_name {
            return name.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "dnet-unit".to_owned());
        format!("{host}:{port}")
    }
}
