//! Retries within a call's deadline of what provably did not get through:
//! full-jitter backoff (AWS architecture blog, "Exponential Backoff and
//! Jitter") and a retry budget (Finagle, Linkerd: retries capped at a share
//! of calls, credited once per call), so that a broker restart or a next
//! unit's replica dying costs callers little, and an outage does not
//! multiply the load. What the next unit answered itself (even UNAVAILABLE,
//! which names a unit further down) and a call that broke after it was sent
//! are never retried: the first is final, the second may have been
//! computed (or have killed the unit it reached).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use crate::error::{BackendError, Error, Retry};

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

    /// Credits the budget with one call (once per call, however many
    /// attempts of it the unit makes, at its queue and at the next unit).
    pub fn deposit(&self) {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
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
        let mut ceiling = FIRST_BACKOFF;
        let mut tries = 0_u32;
        loop {
            tries += 1;
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) if retryable(&error, tries) => error,
                Err(error) => return Err(error),
            };
            // Full jitter: a random wait up to the ceiling.
            let wait = ceiling.mul_f64(fastrand::f64());
            if Instant::now() + wait >= deadline || !budget.withdraw() {
                return Err(error);
            }
            retried();
            tokio::time::sleep(wait).await;
            ceiling = (ceiling * 2).min(MAX_BACKOFF);
        }
    }
}

/// Failures that another attempt (the `tries`-th failed) may not meet: the
/// backend says so (its broker session is down or refused the request; a
/// closed publish channel once more), or the call could not be sent to the
/// next unit. (Inference is idempotent: a request that reached a worker
/// before the broker connection broke may be computed twice; its first
/// reply has nowhere to go. A worker that dies of a request is the queue's
/// business: the broker gives the request to another, counting the deaths.)
fn retryable(error: &Error, tries: u32) -> bool {
    match error {
        Error::Backend(BackendError { retry, .. }) => match retry {
            Retry::Yes => true,
            Retry::Once => tries == 1,
            Retry::Never => false,
        },
        Error::NextNotSent { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn unavailable() -> Error {
        Error::Backend(BackendError::new(
            tonic::Code::Unavailable,
            "connection lost",
            Retry::Yes,
        ))
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
            Err::<(), _>(Error::Backend(BackendError::new(
                tonic::Code::DeadlineExceeded,
                "no reply within 1 ms",
                Retry::Never,
            )))
        };
        assert!(RetryPolicy::new(10.0).run(later, || {}, timeout).await.is_err());
        assert_eq!(tries.load(Ordering::SeqCst), 1, "a timeout is not retried");

        tries.store(0, Ordering::SeqCst);
        assert!(RetryPolicy::new(0.0).run(later, || {}, attempt).await.is_err());
        assert_eq!(tries.load(Ordering::SeqCst), 1, "retries off");
    }

    /// Retries made by `calls` calls at once that always fail and have
    /// 100 ms each: each credits the budget once and runs the policy `runs`
    /// times (at its queue, then at the next unit).
    async fn retries_of_failing_calls(calls: u32, runs: usize) -> u32 {
        let policy = std::sync::Arc::new(RetryPolicy::new(10.0));
        let retried = std::sync::Arc::new(AtomicU32::new(0));
        let deadline = Instant::now() + Duration::from_millis(100);
        let tasks: Vec<_> = (0..calls)
            .map(|_| {
                let (policy, retried) = (std::sync::Arc::clone(&policy), std::sync::Arc::clone(&retried));
                tokio::spawn(async move {
                    policy.deposit();
                    for _ in 0..runs {
                        let count = || {
                            retried.fetch_add(1, Ordering::SeqCst);
                        };
                        let _ = policy
                            .run(deadline, count, || async { Err::<(), _>(unavailable()) })
                            .await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        retried.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_at_a_share_of_calls() {
        // Without a budget every call would retry at least once within its deadline.
        let retries = retries_of_failing_calls(1000, 1).await;
        assert!(retries > 0 && retries < 1000 / 4, "{retries} retries for 1000 calls");
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_next_unit_answered_or_may_have_computed_is_not_retried() {
        let later = Instant::now() + Duration::from_secs(5);
        let final_errors = [
            // UNAVAILABLE answered by the next unit: it names a unit further down.
            Error::Next {
                address: "b:1".into(),
                code: tonic::Code::Unavailable,
                message: "next unit c:1 is unavailable: none of its addresses is serving".into(),
            },
            Error::NextBroken {
                address: "b:1".into(),
                message: "connection reset".into(),
            },
            Error::NextDown { address: "b:1".into() },
        ];
        for error in final_errors {
            let tries = AtomicU32::new(0);
            let shown = error.to_string();
            let error = std::sync::Mutex::new(Some(error));
            let outcome = RetryPolicy::new(10.0)
                .run(
                    later,
                    || {},
                    || {
                        tries.fetch_add(1, Ordering::SeqCst);
                        let error = error.lock().expect("lock").take().expect("one attempt only");
                        async move { Err::<(), _>(error) }
                    },
                )
                .await;
            assert!(outcome.is_err());
            assert_eq!(tries.load(Ordering::SeqCst), 1, "{shown}");
        }

        let tries = AtomicU32::new(0);
        let not_sent = || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::NextNotSent {
                address: "b:1".into(),
                message: "tcp connect error".into(),
            })
        };
        let _ = RetryPolicy::new(10.0).run(later, || {}, not_sent).await;
        assert!(tries.load(Ordering::SeqCst) > 2, "a call never sent is tried again");

        tries.store(0, Ordering::SeqCst);
        let later = Instant::now() + Duration::from_secs(5);
        let closed = || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::Backend(BackendError::new(
                tonic::Code::FailedPrecondition,
                "message size 2000 is larger than configured max size 1000",
                Retry::Once,
            )))
        };
        let _ = RetryPolicy::new(10.0).run(later, || {}, closed).await;
        assert_eq!(
            tries.load(Ordering::SeqCst),
            2,
            "a closed publish channel: one more try"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_credits_the_budget_once_whatever_it_retries() {
        // tower's TpsBudget: a reserve of 10 per second over its 10 s window
        // (100), plus 10% of the deposits (100); crediting each call twice
        // would allow 100 more.
        let retries = retries_of_failing_calls(1000, 2).await;
        assert!((100..=240).contains(&retries), "{retries} retries for 1000 calls");
    }
}
