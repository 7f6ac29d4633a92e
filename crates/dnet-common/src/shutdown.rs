//! Completion on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).

use tracing::info;

/// Completes when the process receives SIGTERM or SIGINT.
///
/// # Panics
/// Never in practice: installing a signal handler only fails when the runtime
/// has no signal driver, which `#[tokio::main]` always enables.
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop the program");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "shutting down"),
        _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "shutting down"),
    }
}
