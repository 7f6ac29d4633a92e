//! Retries of UNAVAILABLE within a call's deadline: full-jitter backoff
//! (AWS architecture blog, "Exponential Backoff and Jitter") and a retry
//! budget (Finagle, Linkerd: retries capped at a share of calls), so that a
//! broker restart or a next unit's restart costs callers little, and an
//! outage does not multiply the load.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use crate::error::{Error, QueueError};

/// First backoff ceiling; doubled on each retry of a call.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Largest backoff ceiling.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Retries allowed per second whatever the traffic (so a quiet unit can retry too).
const MIN_RETRIES_PER_SECOND: u32 = 10;

/// When a failed attempt may be tried again.
pub struct RetryPolicy {
    /// `None`: retries are off.
    budget: Option<TpsBudget>,
}

impl RetryPolicy {
    /// Retries up to `percent` of calls (plus a few per second); 0 turns them off.
    #[must_use]
    pub fn new(percent: f32) -> Self {
        let budget =
            (percent > 0.0).then(|| TpsBudget::new(Duration::from_secs(10), MIN_RETRIES_PER_SECOND, percent / 100.0));
        Self { budget }
    }

    /// Runs `attempt` until it succeeds, fails in a way a retry cannot mend,
    /// the budget is spent, or the next wait would end past `deadline`.
    /// `retried` is told of each retry.
    ///
    /// # Errors
    /// The last attempt's error.
    pub async fn run<T, F, Fut>(&self, deadline: Instant, retried: impl Fn(), mut attempt: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let Some(budget) = &self.budget else {
            return attempt().await;
        };
        budget.deposit();
        let mut ceiling = FIRST_BACKOFF;
        loop {
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) if retryable(&error) => error,
                Err(error) => return Err(error),
            };
            let wait = dnet_amqp::connect::full_jitter(ceiling);
            if Instant::now() + wait >= deadline || !budget.withdraw() {
                return Err(error);
            }
            retried();
            tokio::time::sleep(wait).await;
            ceiling = (ceiling * 2).min(MAX_BACKOFF);
        }
    }
}

/// UNAVAILABLE that another attempt may not meet: the broker session is down
/// or refused the request, or the next unit cannot be reached. (Inference is
/// idempotent: a request that reached a worker before the connection broke
/// may be computed twice; its first reply has nowhere to go.)
fn retryable(error: &Error) -> bool {
    matches!(
        error,
        Error::Queue(
            QueueError::NotConnected { .. }
                | QueueError::ConnectionLost
                | QueueError::Refused { .. }
                | QueueError::Amqp { .. }
        ) | Error::NextUnavailable { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn unavailable() -> Error {
        Error::Queue(QueueError::ConnectionLost)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_unavailable_until_it_succeeds() {
        let policy = RetryPolicy::new(10.0);
        let (tries, retried) = (AtomicU32::new(0), AtomicU32::new(0));
        let answer = policy
            .run(
                Instant::now() + Duration::from_secs(5),
                || {
                    retried.fetch_add(1, Ordering::SeqCst);
                },
                || async {
                    let n = tries.fetch_add(1, Ordering::SeqCst);
                    if n < 2 {
                        Err(unavailable())
                    } else {
                        Ok(n)
                    }
                },
            )
            .await;
        assert_eq!(answer.ok(), Some(2));
        assert_eq!(retried.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_past_the_deadline_other_errors_or_when_off() {
        let deadline = Instant::now() + Duration::from_millis(1);
        let tries = AtomicU32::new(0);
        let attempt = || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(unavailable())
        };
        assert!(RetryPolicy::new(10.0).run(deadline, || {}, attempt).await.is_err());
        assert!(
            tries.load(Ordering::SeqCst) <= 2,
            "no retry that would end past the deadline"
        );

        tries.store(0, Ordering::SeqCst);
        let later = Instant::now() + Duration::from_secs(5);
        let timeout = || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::Queue(QueueError::Timeout {
                queue: "q".into(),
                waited_ms: 1,
            }))
        };
        assert!(RetryPolicy::new(10.0).run(later, || {}, timeout).await.is_err());
        assert_eq!(tries.load(Ordering::SeqCst), 1, "a timeout is not retried");

        tries.store(0, Ordering::SeqCst);
        assert!(RetryPolicy::new(0.0).run(later, || {}, attempt).await.is_err());
        assert_eq!(tries.load(Ordering::SeqCst), 1, "retries off");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_at_a_share_of_calls() {
        let policy = std::sync::Arc::new(RetryPolicy::new(10.0));
        let retried = std::sync::Arc::new(AtomicU32::new(0));
        let calls = 1000;
        // Calls at once that always fail, each with 100 ms: without a budget
        // every one of them would retry at least once within its deadline.
        let deadline = Instant::now() + Duration::from_millis(100);
        let tasks: Vec<_> = (0..calls)
            .map(|_| {
                let (policy, retried) = (std::sync::Arc::clone(&policy), std::sync::Arc::clone(&retried));
                tokio::spawn(async move {
                    let count = || {
                        retried.fetch_add(1, Ordering::SeqCst);
                    };
                    let _ = policy
                        .run(deadline, count, || async { Err::<(), _>(unavailable()) })
                        .await;
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        let retries = retried.load(Ordering::SeqCst);
        assert!(
            retries > 0 && retries < calls / 4,
            "{retries} retries for {calls} calls"
        );
    }
}
