//! DNet's side of RabbitMQ, shared by the transmission unit and the worker:
//! how the computation queue is declared (the contract with the original
//! programs, docs/architecture.md) and how a program connects to the broker.
//! Kept apart from `dnet-common` so that programs without a broker (the test
//! client) do not link an AMQP client.

use std::future::Future;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tracing::{info, warn};

/// First wait between connection attempts; doubled after each failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Options every DNet program declares the computation queue with.
///
/// They match the original Python worker (`queue_declare(queue=name)`):
/// non-durable, not exclusive, not auto-delete, no arguments. RabbitMQ refuses
/// a declare whose options differ from the queue's, so both sides must agree.
#[must_use]
pub fn computation_queue_options() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
    }
}

/// Arguments of the computation queue declaration (none, as the original).
#[must_use]
pub fn computation_queue_arguments() -> FieldTable {
    FieldTable::default()
}

/// Connects to `uri` (`amqp://` or `amqps://`), retrying with capped
/// exponential backoff and logging each failed attempt, until it succeeds or
/// `cancel` completes (then `None`). `tls_ca` (PEM) is trusted for `amqps://`
/// besides the system's CAs.
pub async fn connect_with_backoff(
    uri: &str,
    connection_name: &str,
    tls_ca: Option<&str>,
    cancel: impl Future<Output = ()>,
) -> Option<Connection> {
    tokio::pin!(cancel);
    let mut backoff = FIRST_BACKOFF;
    let mut attempt: u32 = 1;
    loop {
        let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: tls_ca.map(str::to_owned),
        };
        let connecting =
            async { Connection::connect_with_config(uri, properties, tls, lapin::runtime::default_runtime()?).await };
        let result = tokio::select! {
            result = connecting => result,
            () = &mut cancel => return None,
        };
        match result {
            Ok(connection) => {
                info!(broker = %redact(uri), attempt, "connected to RabbitMQ");
                return Some(connection);
            }
            Err(error) => {
                warn!(broker = %redact(uri), attempt, retry_in_ms = backoff.as_millis() as u64, %error,
                    "cannot connect to RabbitMQ, retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut cancel => return None,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        attempt = attempt.saturating_add(1);
    }
}

/// `uri` with any password replaced by `***`, for logs.
#[must_use]
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return uri.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => uri.to_owned(),
    }
}

/// Reads the PEM file of a CA to trust for `amqps://`.
///
/// # Errors
/// The file cannot be read.
pub fn read_ca(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read the broker CA {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://localhost"), "amqp://localhost");
        assert_eq!(redact("amqp://user@host"), "amqp://user@host");
    }
}
