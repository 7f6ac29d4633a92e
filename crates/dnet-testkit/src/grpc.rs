//! A unit seen from its gRPC side: clients, health, queue status.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use dnet_proto::{DNetClient, QstatusRequest};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Largest message the kit's clients accept (a batch of intermediate tensors).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A `unit.DNet` client of the unit at `address` (plain HTTP/2).
///
/// # Errors
/// Nothing accepts connections there.
pub async fn client(address: SocketAddr) -> anyhow::Result<DNetClient<Channel>> {
    let client = DNetClient::connect(format!("http://{address}"))
        .await
        .with_context(|| format!("cannot connect to the unit at {address}"))?;
    Ok(client
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The health a unit reports for `service` (`"unit.DNet"`: readiness, `""`:
/// liveness); `None` when it cannot be asked.
pub async fn health(address: SocketAddr, service: &str) -> Option<ServingStatus> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(answer.into_inner().status).ok()
}

/// Waits up to `limit` until `unit.DNet` at `address` reports `status`.
///
/// # Errors
/// It never did.
pub async fn wait_for_health(address: SocketAddr, status: ServingStatus, limit: Duration) -> anyhow::Result<()> {
    crate::wait_for(
        &format!("unit at {address} to report {status:?}"),
        limit,
        || async move { (health(address, "unit.DNet").await == Some(status)).then_some(()) },
    )
    .await
}

/// Opens a health watch of `unit.DNet` at `address` (a stream the unit
/// never ends by itself) and waits up to `limit` for it to end; returns how
/// long it lasted.
///
/// # Errors
/// The watch cannot be opened, or it was still open after `limit`.
pub async fn watch_lasts(address: SocketAddr, limit: Duration) -> anyhow::Result<Duration> {
    let channel = Channel::from_shared(format!("http://{address}"))?.connect().await?;
    let started = std::time::Instant::now();
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "unit.DNet".to_owned(),
        })
        .await?
        .into_inner();
    let ended = tokio::time::timeout(limit, async { while let Ok(Some(_update)) = stream.message().await {} }).await;
    ended.map_err(|_| anyhow::anyhow!("the health watch of {address} was still open after {limit:?}"))?;
    Ok(started.elapsed())
}

/// (messages waiting, consumers) of the unit's queue, from `Qstatus`.
///
/// # Errors
/// The unit cannot be reached or cannot read its queue.
pub async fn qstatus(address: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let answer = client(address)
        .await?
        .qstatus(QstatusRequest {})
        .await
        .with_context(|| format!("Qstatus of the unit at {address}"))?
        .into_inner();
    Ok((answer.qlength, answer.consumer))
}

/// The statuses a health watch of `unit.DNet` has seen, collected in the background.
pub struct HealthUpdates {
    seen: std::sync::Arc<std::sync::Mutex<Vec<ServingStatus>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthUpdates {
    /// Stops watching; every status seen, the first (the status when the watch opened) included.
    #[must_use]
    pub fn stop(self) -> Vec<ServingStatus> {
        self.task.abort();
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Opens a health watch of `unit.DNet` at `address` and records each
/// status it sends until [`HealthUpdates::stop`].
///
/// # Errors
/// The watch cannot be opened.
pub async fn health_updates(address: SocketAddr) -> anyhow::Result<HealthUpdates> {
    let channel = Channel::from_shared(format!("http://{address}"))?.connect().await?;
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "unit.DNet".to_owned(),
        })
        .await?
        .into_inner();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    let task = tokio::spawn(async move {
        while let Ok(Some(update)) = stream.message().await {
            record
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(update.status());
        }
    });
    Ok(HealthUpdates { seen, task })
}
