//! Spreading gRPC calls over every address of a target: a comma list of
//! `host:port`, each name resolved (a Kubernetes headless Service resolves to
//! every ready pod) and resolved again every [`REFRESH`]. An address is used
//! while it accepts TCP connections (checked at each refresh), so a replica
//! that died is dropped within a refresh and taken back once it answers again.
//! Calls go to the less loaded of two random live addresses: tower's
//! power-of-two-choices balancer, through tonic's `balance_channel`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{lookup_host, TcpStream};
use tokio::sync::mpsc::Sender;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use tracing::{info, warn};

use crate::http2;

/// How often names are resolved again and addresses checked.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long an address may take to accept a connection before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Builds the endpoint of one address (scheme, TLS, HTTP/2 settings).
pub type MakeEndpoint = Box<dyn Fn(SocketAddr) -> Result<Endpoint, String> + Send + Sync>;

/// How long connecting to an address may take before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A channel whose calls spread over the live addresses of a target.
#[derive(Clone, Debug)]
pub struct Balanced {
    pub channel: Channel,
    live: Gauge,
}

impl Balanced {
    /// Resolves and checks `targets` (`host:port[,host:port...]`, each may
    /// start with `http://` or `https://`) once, then keeps following them
    /// in a task that ends when the last clone of the channel is dropped.
    /// `live` counts the addresses in use (e.g. a metric).
    ///
    /// # Errors
    /// `targets` is not a comma list of `host:port`.
    pub async fn start(targets: &str, endpoint: MakeEndpoint, live: Gauge) -> Result<Self, String> {
        let hosts = parse(targets)?;
        let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
        let mut follower = Follower {
            hosts,
            endpoint,
            changes,
            live: live.clone(),
            current: HashSet::new(),
        };
        if follower.refresh().await {
            tokio::spawn(follower.run());
        }
        Ok(Self { channel, live })
    }

    /// Addresses that accepted a connection at the last refresh.
    #[must_use]
    pub fn live(&self) -> usize {
        usize::try_from(self.live.get()).unwrap_or_default()
    }
}

/// The endpoint of one address as every DNet client uses it: HTTP/2 windows
/// and frames for tensors, no Nagle, keep-alive, and TLS when `tls` is given
/// (its domain name set by the caller: the address is an IP).
#[must_use]
pub fn endpoints(tls: Option<ClientTlsConfig>) -> MakeEndpoint {
    Box::new(move |address: SocketAddr| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(http2::STREAM_WINDOW)
            .initial_connection_window_size(http2::CONNECTION_WINDOW)
            .max_frame_size(http2::MAX_FRAME);
        match &tls {
            Some(tls) => endpoint.tls_config(tls.clone()).map_err(|e| e.to_string()),
            None => Ok(endpoint),
        }
    })
}

/// The host of the first address of `targets` (the default TLS name).
#[must_use]
pub fn first_host(targets: &str) -> Option<String> {
    parse(targets).ok()?.into_iter().next().map(|(host, _)| host)
}

/// The `(host, port)` pairs of a comma list.
fn parse(targets: &str) -> Result<Vec<(String, u16)>, String> {
    let hosts = targets
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|target| {
            let authority = target.split_once("://").map_or(target, |(_, rest)| rest);
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| format!("'{target}' is not host:port"))?;
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("'{target}': '{port}' is not a port number"))?;
            Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if hosts.is_empty() {
        return Err("no address given".to_owned());
    }
    Ok(hosts)
}

struct Follower {
    hosts: Vec<(String, u16)>,
    endpoint: MakeEndpoint,
    changes: Sender<Change<SocketAddr, Endpoint>>,
    live: Gauge,
    /// Addresses the balancer has now.
    current: HashSet<SocketAddr>,
}

impl Follower {
    async fn run(mut self) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(REFRESH) => {}
                () = self.changes.closed() => return,
            }
            if !self.refresh().await {
                return;
            }
        }
    }

    /// Resolves, checks, and tells the balancer what changed; false once
    /// the balancer is gone.
    async fn refresh(&mut self) -> bool {
        let up = self.live_addresses().await;
        for gone in self.current.difference(&up) {
            info!(address = %gone, "next address down or gone: no more calls to it");
            if self.changes.send(Change::Remove(*gone)).await.is_err() {
                return false;
            }
        }
        for new in up.difference(&self.current) {
            match (self.endpoint)(*new) {
                Ok(endpoint) => {
                    info!(address = %new, "next address up: calls go to it");
                    if self.changes.send(Change::Insert(*new, endpoint)).await.is_err() {
                        return false;
                    }
                }
                Err(error) => warn!(address = %new, %error, "cannot call this address"),
            }
        }
        self.live.set(i64::try_from(up.len()).unwrap_or(i64::MAX));
        self.current = up;
        true
    }

    /// Every address the hosts resolve to that accepts a TCP connection now.
    async fn live_addresses(&self) -> HashSet<SocketAddr> {
        let mut resolved = HashSet::new();
        for (host, port) in &self.hosts {
            match lookup_host((host.as_str(), *port)).await {
                Ok(addresses) => resolved.extend(addresses),
                Err(error) => warn!(host, %error, "cannot resolve"),
            }
        }
        let probes = resolved.into_iter().map(|address| async move {
            let connected = tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(address)).await;
            matches!(connected, Ok(Ok(_))).then_some(address)
        });
        futures::future::join_all(probes).await.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comma_lists_of_host_port() {
        assert_eq!(
            parse("a:1, http://b:2,[::1]:3").expect("valid"),
            vec![("a".to_owned(), 1), ("b".to_owned(), 2), ("::1".to_owned(), 3)]
        );
        assert!(parse("a").is_err());
        assert!(parse("a:x").is_err());
        assert!(parse(" , ").is_err());
    }
}
