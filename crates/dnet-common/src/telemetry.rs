//! Tracing set-up shared by the binaries.

use tracing_subscriber::EnvFilter;

/// Default filter when `RUST_LOG` is unset: our logs at info, chatty libraries at warn.
const DEFAULT_FILTER: &str = "info,lapin=warn,h2=warn,tower=warn,hyper=warn";

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Flags both programs share: logging and the metrics endpoint.
#[derive(Clone, Debug, clap::Args)]
pub struct ObservabilityArgs {
    /// Address of the Prometheus endpoint (/metrics); off when unset.
    #[arg(long, env = "DNET_METRICS_ADDRESS")]
    pub metrics_address: Option<String>,

    /// Log line format.
    #[arg(long, env = "DNET_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Installs the global tracing subscriber (`RUST_LOG` overrides the filter).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
