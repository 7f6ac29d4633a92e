//! Waiting for a state the test needs, and saying which one never came.

use std::future::Future;
use std::time::Duration;

use anyhow::bail;

/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(50);

/// Checks `condition` until it returns `Some`, for up to `limit`.
///
/// # Errors
/// The condition did not hold within `limit`; the message names `what`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut condition: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = condition().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("waited {limit:?} for {what}; it never happened");
        }
        tokio::time::sleep(POLL).await;
    }
}
