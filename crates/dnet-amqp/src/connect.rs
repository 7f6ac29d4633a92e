//! Connecting to the broker: retries with capped, fully jittered backoff,
//! passwords kept out of logs, an extra CA for `amqps://`.

use std::future::Future;
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::AMQPUri;
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
            // Full jitter (AWS architecture blog): programs that lost the
            // broker together do not reconnect in step.
            () = tokio::time::sleep(backoff.mul_f64(fastrand::f64())) => {}
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

/// `uri` as lapin reads it, with the password replaced by `***`, for logs
/// (a URI that does not parse is not shown at all).
#[must_use]
pub fn redact(uri: &str) -> String {
    match uri.parse::<AMQPUri>() {
        Ok(parsed) => format!(
            "{}://{}:***@{}:{}/{}",
            parsed.scheme,
            parsed.authority.userinfo.username,
            parsed.authority.host,
            parsed.authority.port,
            parsed.vhost.replace('/', "%2f"),
        ),
        Err(_) => "(a broker URI that does not parse)".to_owned(),
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
        assert_eq!(redact("amqp://localhost"), "amqp://guest:***@localhost:5672/%2f");
        assert_eq!(redact("amqps://user@host/prod"), "amqps://user:***@host:5671/prod");
        assert_eq!(redact("not a :// uri @ secret"), "(a broker URI that does not parse)");
    }
}
