//! Connecting to the broker: retries with capped, fully jittered backoff,
//! passwords kept out of logs, an extra CA for `amqps://`.

use std::future::Future;
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};
use tracing::{info, warn};

/// First wait between connection attempts; doubled after each failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Connects to `uri` (`amqp://` or `amqps://`), retrying with capped
/// exponential backoff and full jitter, logging each failed attempt, until it succeeds or
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
                warn!(broker = %redact(uri), attempt, retry_within_ms = backoff.as_millis() as u64, %error,
                    "cannot connect to RabbitMQ, retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(full_jitter(backoff)) => {}
            () = &mut cancel => return None,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        attempt = attempt.saturating_add(1);
    }
}

/// How long closing a connection may take before it is given up: a broker
/// that never answers the close (or a channel stuck closing) must not hang
/// a program's shutdown.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// Closes `connection` with `code` and `reason`, waiting at most CLOSE_WITHIN.
pub async fn close(connection: &Connection, code: u16, reason: &str) {
    if tokio::time::timeout(CLOSE_WITHIN, connection.close(code, reason.into()))
        .await
        .is_err()
    {
        warn!(
            reason,
            "the broker did not confirm closing the connection in time; leaving it"
        );
    }
}

/// A random wait in `[0, ceiling)` ("full jitter", AWS architecture blog):
/// programs that lost the broker together do not reconnect in step.
#[must_use]
pub fn full_jitter(ceiling: Duration) -> Duration {
    ceiling.mul_f64(fastrand::f64())
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
