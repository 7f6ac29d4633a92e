//! Tracing set-up shared by the binaries.

use std::io::IsTerminal;

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
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(format, std::io::stderr().is_terminal(), no_color))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Whether log lines carry ANSI colour codes: only text lines to a terminal,
/// and not when `NO_COLOR` is set (no-color.org). In a file or a pipe the
/// codes are noise a reader must strip.
fn colour(format: LogFormat, stderr_is_terminal: bool, no_color: bool) -> bool {
    format == LogFormat::Text && stderr_is_terminal && !no_color
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_for_text_on_a_terminal_without_no_color() {
        assert!(colour(LogFormat::Text, true, false));
        assert!(!colour(LogFormat::Text, false, false), "a file or a pipe");
        assert!(!colour(LogFormat::Text, true, true), "NO_COLOR");
        assert!(!colour(LogFormat::Json, true, false), "JSON lines");
    }
}
