//! Spreading gRPC calls over every serving address of a target: a comma
//! list of `host:port`, each name resolved (a Kubernetes headless Service
//! resolves to every ready pod) and resolved again every [`REFRESH`].
//!
//! An address receives calls while its grpc.health.v1 status of `unit.DNet`
//! is SERVING (Envoy, Linkerd and grpc-go's client-side health checking):
//! each address is watched (`Watch`) over a connection of its own, so a unit
//! whose broker is down, or that is still loading its model, gets no calls,
//! and NOT_SERVING or a broken watch takes it out at once. A server without
//! the health service (the original DNet) counts as serving while it accepts
//! connections. Calls go to the less loaded of two random serving addresses:
//! tower's power-of-two-choices balancer, through tonic's `balance_channel`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{lookup_host, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tracing::{debug, info, warn};

use crate::http2;

/// How often names are resolved again, and a lost watch is tried again.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long [`Balanced::start`] waits for the first health answers.
const FIRST_ANSWERS: Duration = Duration::from_millis(500);
/// The health entry of a unit's readiness (its `unit.DNet` service).
pub const HEALTH_SERVICE: &str = "unit.DNet";

/// Builds the endpoint of one address (scheme, TLS, HTTP/2 settings).
pub type MakeEndpoint = Box<dyn Fn(SocketAddr) -> Result<Endpoint, String> + Send + Sync>;

/// How long connecting to an address may take before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A channel whose calls spread over the serving addresses of a target.
#[derive(Clone, Debug)]
pub struct Balanced {
    pub channel: Channel,
    live: Gauge,
}

impl Balanced {
    /// Resolves `targets` (`host:port[,host:port...]`, each may start with
    /// `http://` or `https://`), starts watching every address, waits briefly
    /// for their first answers, then keeps following them in a task that
    /// ends when the last clone of the channel is dropped. `live` counts the
    /// serving addresses (e.g. a metric).
    ///
    /// # Errors
    /// `targets` is not a comma list of `host:port`.
    pub async fn start(targets: &str, endpoint: MakeEndpoint, live: Gauge) -> Result<Self, String> {
        let hosts = parse(targets)?;
        let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
        let (events, health) = mpsc::channel(64);
        let mut follower = Follower {
            hosts,
            endpoint: Arc::new(endpoint),
            changes,
            live: live.clone(),
            watchers: HashMap::new(),
            serving: HashSet::new(),
            events,
        };
        let mut health = health;
        follower.resolve().await;
        if follower.first_answers(&mut health).await {
            tokio::spawn(follower.run(health));
        }
        Ok(Self { channel, live })
    }

    /// Addresses whose health is SERVING now.
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

/// What a watcher tells the follower: an address is serving, or not.
type Health = (SocketAddr, bool);

/// Stops a watcher's task when the address leaves the resolved set.
struct Watcher(JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Follower {
    hosts: Vec<(String, u16)>,
    endpoint: Arc<MakeEndpoint>,
    changes: mpsc::Sender<Change<SocketAddr, Endpoint>>,
    live: Gauge,
    /// One watcher per resolved address.
    watchers: HashMap<SocketAddr, Watcher>,
    /// Addresses the balancer has now (their health is SERVING).
    serving: HashSet<SocketAddr>,
    events: mpsc::Sender<Health>,
}

impl Follower {
    async fn run(mut self, mut health: mpsc::Receiver<Health>) {
        let mut resolve = tokio::time::interval(REFRESH);
        loop {
            let alive = tokio::select! {
                _ = resolve.tick() => { self.resolve().await; true }
                Some((address, serving)) = health.recv() => self.apply(address, serving).await,
                () = self.changes.closed() => false,
            };
            if !alive {
                return;
            }
        }
    }

    /// Applies health answers until every address has answered once, or
    /// [`FIRST_ANSWERS`] has passed; false once the balancer is gone.
    async fn first_answers(&mut self, health: &mut mpsc::Receiver<Health>) -> bool {
        let mut answered = HashSet::new();
        let until = tokio::time::Instant::now() + FIRST_ANSWERS;
        while answered.len() < self.watchers.len() {
            match tokio::time::timeout_at(until, health.recv()).await {
                Ok(Some((address, serving))) => {
                    answered.insert(address);
                    if !self.apply(address, serving).await {
                        return false;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        true
    }

    /// Resolves the hosts again: a watcher for each new address, none for
    /// those gone.
    async fn resolve(&mut self) {
        let mut resolved = HashSet::new();
        for (host, port) in &self.hosts {
            match lookup_host((host.as_str(), *port)).await {
                Ok(addresses) => resolved.extend(addresses),
                Err(error) => warn!(host, %error, "cannot resolve"),
            }
        }
        let gone: Vec<SocketAddr> = self
            .watchers
            .keys()
            .filter(|a| !resolved.contains(a))
            .copied()
            .collect();
        for address in gone {
            self.watchers.remove(&address);
            self.apply(address, false).await;
        }
        for address in resolved {
            self.watchers.entry(address).or_insert_with(|| {
                let task = watch(address, Arc::clone(&self.endpoint), self.events.clone());
                Watcher(tokio::spawn(task))
            });
        }
    }

    /// Tells the balancer that `address` is serving or not; false once the
    /// balancer is gone.
    async fn apply(&mut self, address: SocketAddr, serving: bool) -> bool {
        // An answer may arrive from a watcher just stopped: only watched addresses serve.
        let serving = serving && self.watchers.contains_key(&address);
        let change = match (serving, self.serving.contains(&address)) {
            (true, false) => match (self.endpoint)(address) {
                Ok(endpoint) => {
                    info!(%address, "next address serving: calls go to it");
                    self.serving.insert(address);
                    Change::Insert(address, endpoint)
                }
                Err(error) => {
                    warn!(%address, %error, "cannot call this address");
                    return true;
                }
            },
            (false, true) => {
                info!(%address, "next address not serving or gone: no more calls to it");
                self.serving.remove(&address);
                Change::Remove(address)
            }
            _ => return true,
        };
        self.live.set(i64::try_from(self.serving.len()).unwrap_or(i64::MAX));
        self.changes.send(change).await.is_ok()
    }
}

/// Why a health watch ended.
enum Ended {
    /// It could not start: the address does not answer, or not as a unit.
    CannotStart(String),
    /// It was under way and broke (a connection cut, a GOAWAY).
    Broke(String),
}

/// Watches the health of `address` until the task is aborted: each answer
/// goes to `events`. A watch that broke is started again at once, the
/// address keeping its state meanwhile (a cut connection is not a unit
/// down); one that cannot start counts as not serving, and is tried again
/// after [`REFRESH`].
async fn watch(address: SocketAddr, endpoint: Arc<MakeEndpoint>, events: mpsc::Sender<Health>) {
    loop {
        let started = tokio::time::Instant::now();
        let why = match watch_once(address, &endpoint, &events).await {
            // One that broke at once is not tried again at once (no busy loop).
            Ended::Broke(why) if started.elapsed() >= REFRESH => {
                debug!(%address, why, "health watch broke; watching again");
                continue;
            }
            Ended::Broke(why) | Ended::CannotStart(why) => why,
        };
        debug!(%address, why, "no health watch");
        if events.send((address, false)).await.is_err() {
            return;
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// One health watch of `address`, until it ends.
async fn watch_once(address: SocketAddr, endpoint: &MakeEndpoint, events: &mpsc::Sender<Health>) -> Ended {
    let connected = match endpoint(address) {
        Ok(endpoint) => endpoint.connect().await.map_err(|e| e.to_string()),
        Err(error) => Err(error),
    };
    let channel = match connected {
        Ok(channel) => channel,
        Err(why) => return Ended::CannotStart(why),
    };
    let request = HealthCheckRequest {
        service: HEALTH_SERVICE.to_owned(),
    };
    let mut stream = match HealthClient::new(channel).watch(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => {
            return Ended::CannotStart(serving_while_it_accepts(address, events).await)
        }
        Err(status) => return Ended::CannotStart(status.to_string()),
    };
    loop {
        match stream.message().await {
            Ok(Some(answer)) => {
                let serving = answer.status == ServingStatus::Serving as i32;
                if events.send((address, serving)).await.is_err() {
                    return Ended::CannotStart("the balancer is gone".to_owned());
                }
            }
            Ok(None) => return Ended::CannotStart("the health watch ended (the unit is stopping)".to_owned()),
            Err(status) => return Ended::Broke(status.to_string()),
        }
    }
}

/// A server without grpc.health (the original DNet): serving while it
/// accepts TCP connections, checked every [`REFRESH`]; returns why it stopped.
async fn serving_while_it_accepts(address: SocketAddr, events: &mpsc::Sender<Health>) -> String {
    loop {
        if events.send((address, true)).await.is_err() {
            return "the balancer is gone".to_owned();
        }
        tokio::time::sleep(REFRESH).await;
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return error.to_string(),
            Err(_) => return "connect timed out".to_owned(),
        }
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
