//! Connecting to the broker: one of several nodes (a cluster's), each
//! tried in turn, with capped, fully jittered backoff between rounds;
//! passwords kept out of logs, an extra CA for `amqps://`.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::limits::{check_message_size, SizeError};
use tracing::{info, warn};

/// First wait between rounds of connection attempts; doubled after each failed round.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest one attempt may take: a node that stopped answering (not
/// refusing) must not hold the program off the others.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker nodes a program may use, and which it used last.
#[derive(Clone, Debug)]
pub struct Brokers {
    uris: Vec<String>,
    connection_name: String,
    tls_ca: Option<String>,
    /// Where the next round starts: after the node used last, so that a
    /// program that lost its node tries the others first.
    next: usize,
    /// The nodes whose message size limit was checked.
    checked: HashSet<String>,
    /// Sessions that could not be set up since the last one that could.
    failed_opens: usize,
}

/// A connection, and the node (`host:port`) it is to.
pub struct Connected {
    pub connection: Connection,
    pub node: String,
}

impl Brokers {
    /// `uris` (at least one; a name that resolves to several addresses
    /// counts as each of them), named `connection_name` in the broker's
    /// listings; `tls_ca` (PEM) is trusted for `amqps://` besides the system's CAs.
    #[must_use]
    pub fn new(uris: Vec<String>, connection_name: &str, tls_ca: Option<String>) -> Self {
        Self {
            uris,
            connection_name: connection_name.to_owned(),
            tls_ca,
            next: 0,
            checked: HashSet::new(),
            failed_opens: 0,
        }
    }

    /// [`check_message_size`] of `bytes` on `node` (`flag` names the
    /// program's setting), once per node: a node that passed is not probed again.
    ///
    /// # Errors
    /// See [`check_message_size`].
    pub async fn check_message_size_once(
        &mut self,
        connection: &Connection,
        node: &str,
        bytes: usize,
        flag: &str,
    ) -> Result<(), SizeError> {
        if !self.checked.contains(node) {
            check_message_size(connection, bytes, flag).await?;
            self.checked.insert(node.to_owned());
        }
        Ok(())
    }

    /// A session was set up on the node connected to.
    pub fn opened(&mut self) {
        self.failed_opens = 0;
    }

    /// A session could not be set up on the node connected to; `true` once
    /// a round's worth of them failed since the last that could: a round
    /// without a usable node.
    pub fn failed_to_open(&mut self) -> bool {
        self.failed_opens += 1;
        self.failed_opens >= self.uris.len()
    }

    /// Connects to a node that answers: each in turn, starting after the
    /// one used last, then again after a backoff, until one answers or
    /// `cancel` completes (then `None`). `round_failed` is called after
    /// each round in which no node answered.
    pub async fn connect(
        &mut self,
        cancel: impl Future<Output = ()>,
        mut round_failed: impl FnMut(),
    ) -> Option<Connected> {
        tokio::pin!(cancel);
        let mut backoff = FIRST_BACKOFF;
        let mut round: u32 = 1;
        loop {
            let nodes = self.nodes().await;
            for offset in 0..nodes.len() {
                let index = (self.next + offset) % nodes.len();
                let (uri, node) = &nodes[index];
                let result = tokio::select! {
                    result = self.attempt(uri) => result,
                    () = &mut cancel => return None,
                };
                match result {
                    Ok(connection) => {
                        info!(node = %node, broker = %redact(uri), round, "connected to RabbitMQ");
                        self.next = index + 1;
                        return Some(Connected {
                            connection,
                            node: node.clone(),
                        });
                    }
                    Err(error) => warn!(node = %node, round, %error, "cannot connect to this RabbitMQ node"),
                }
            }
            round_failed();
            warn!(
                nodes = nodes.len(),
                round,
                retry_within_ms = backoff.as_millis() as u64,
                "no RabbitMQ node answered, retrying"
            );
            tokio::select! {
                // Full jitter (AWS architecture blog): programs that lost the
                // broker together do not reconnect in step.
                () = tokio::time::sleep(backoff.mul_f64(fastrand::f64())) => {}
                () = &mut cancel => return None,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            round = round.saturating_add(1);
        }
    }

    async fn attempt(&self, uri: &str) -> Result<Connection, String> {
        let properties = ConnectionProperties::default().with_connection_name(self.connection_name.as_str().into());
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: self.tls_ca.clone(),
        };
        let connecting =
            async { Connection::connect_with_config(uri, properties, tls, lapin::runtime::default_runtime()?).await };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, connecting).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
        }
    }

    /// Each address with its node name (`host:port`): an `amqp://` name that
    /// resolves to several addresses (a Kubernetes headless Service) is each
    /// of them, read again every round (pods come and go). `amqps://` keeps
    /// its name, which its certificate names.
    async fn nodes(&self) -> Vec<(String, String)> {
        let mut nodes = Vec::new();
        for uri in &self.uris {
            let Ok(parsed) = uri.parse::<AMQPUri>() else {
                nodes.push((uri.clone(), redact(uri)));
                continue;
            };
            let host = parsed.authority.host.clone();
            let port = parsed.authority.port;
            let plain = parsed.scheme == lapin::uri::AMQPScheme::AMQP;
            let resolved: Vec<std::net::SocketAddr> = if plain && host.parse::<std::net::IpAddr>().is_err() {
                tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map(Iterator::collect)
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            nodes.extend(each_address(uri, &parsed, &resolved));
        }
        nodes
    }
}

/// `uri` (parsed: `parsed`) as one node per address it resolved to, or as
/// itself when it resolved to one or none.
fn each_address(uri: &str, parsed: &AMQPUri, resolved: &[std::net::SocketAddr]) -> Vec<(String, String)> {
    let (host, port) = (&parsed.authority.host, parsed.authority.port);
    if resolved.len() <= 1 {
        return vec![(uri.to_owned(), format!("{host}:{port}"))];
    }
    resolved
        .iter()
        .map(|address| {
            let mut one = parsed.clone();
            one.authority.host = address.ip().to_string();
            (one.to_string(), format!("{host}:{port} ({})", address.ip()))
        })
        .collect()
}

/// `uris` as given, passwords hidden, for logs.
#[must_use]
pub fn describe(uris: &[String]) -> String {
    uris.iter().map(|uri| redact(uri)).collect::<Vec<_>>().join(",")
}

/// The addresses of `--amqp-address`: comma-separated, each an `amqp://` or
/// `amqps://` URI, or (`host_default`) a bare host that `host_default` makes
/// a URI of (the original worker's `-a host`).
///
/// # Errors
/// No address in the list.
pub fn split_addresses(list: &str, host_default: Option<&dyn Fn(&str) -> String>) -> Result<Vec<String>, String> {
    let addresses: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(|address| match host_default {
            Some(make) if !address.contains("://") => make(address),
            _ => address.to_owned(),
        })
        .collect();
    if addresses.is_empty() {
        return Err(format!("'{list}' names no broker address"));
    }
    Ok(addresses)
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
    use super::{each_address, redact, split_addresses, AMQPUri, Brokers};

    #[test]
    fn a_list_splits_on_commas_and_bare_hosts_become_uris() {
        let host = |h: &str| format!("amqp://guest:guest@{h}/%2f");
        assert_eq!(
            split_addresses("amqp://a:5672, b ,", Some(&host)).expect("two"),
            vec!["amqp://a:5672".to_owned(), "amqp://guest:guest@b/%2f".to_owned()]
        );
        assert!(split_addresses(" , ", None).is_err());
    }

    #[test]
    fn a_name_with_several_addresses_is_each_of_them_credentials_kept() {
        let uri = "amqp://u:p@rabbit-nodes:5999/%2f";
        let parsed: AMQPUri = uri.parse().expect("a URI");
        let resolved: Vec<std::net::SocketAddr> = vec![
            "10.0.0.1:5999".parse().expect("addr"),
            "10.0.0.2:5999".parse().expect("addr"),
        ];
        let nodes = each_address(uri, &parsed, &resolved);
        assert_eq!(
            nodes.iter().map(|(_, node)| node.as_str()).collect::<Vec<_>>(),
            ["rabbit-nodes:5999 (10.0.0.1)", "rabbit-nodes:5999 (10.0.0.2)"]
        );
        for (one, _) in &nodes {
            let parsed: AMQPUri = one.parse().expect("still a URI");
            assert_eq!(
                (
                    parsed.authority.userinfo.username.as_str(),
                    parsed.authority.userinfo.password.as_str()
                ),
                ("u", "p")
            );
        }
        assert_eq!(
            each_address(uri, &parsed, &resolved[..1]),
            [(uri.to_owned(), "rabbit-nodes:5999".to_owned())]
        );
    }

    #[tokio::test]
    async fn localhost_is_one_node_its_ipv6_address_left_out() {
        let brokers = Brokers::new(vec!["amqp://localhost:5999".to_owned()], "test", None);
        assert_eq!(brokers.nodes().await.len(), 1);
    }

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
