//! Answering from here when the units after this one cannot answer in time
//! (`--answer-when-late`, docs/architecture.md "Answers that beat the
//! deadline"): the policy that `UnitService::forward` asks.
//!
//! A unit that hands samples on holds its own exit's answer for them (its
//! rows of the request, `answered`). [`LateAnswers::held`] turns them into
//! the degraded answer, when every sample still waiting clears the floor;
//! the policy gives it, instead of an error or a late reply:
//! - **before forwarding**, when the units after this one have lately
//!   needed more than the call has left ([`Downstream::expected`]) and a
//!   watched forward is already out to measure them (so one call at a time
//!   still tries, and the estimate follows the next unit back when it
//!   recovers), or when nothing is left;
//! - **during the forward**, when it has not answered by the time a late
//!   answer is due;
//! - **after a failure** that says the units after this one cannot answer
//!   ([`cannot_answer`]: none of the next unit's addresses serves, it
//!   refused the call for load, its deadline passed, the call broke).
//!
//! [`Downstream`] keeps what the units after this one have needed: each
//! ordinary forward's time when it ended (answered or failed: network and
//! every unit after this one), and the time it had taken when given up for
//! a late answer (the least it would have needed), for [`REMEMBERED_FOR`].
//! Its estimate is the slowest tenth of at least [`MIN_RECENT`] recent
//! forwards, or the age of the oldest watched forward still out if that is
//! longer: a next unit that stalls raises it before any answer comes back.
//! Only watched forwards (those a held answer can replace, given up when it
//! is due) count as out: a forward without one may run to its deadline and
//! must not hold every other call back. A failure that comes fast costs
//! the caller nothing (its late answer comes at once), so it counts with
//! its own time; one that comes slowly raises the estimate. Shadow forwards
//! are kept out: nobody waits for them.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dnet_codec::Answers;
use dnet_proto::{Bytes, ComputationResponse, Data, StatusCode};
use tokio::time::Instant;
use tonic::Code;

use crate::error::Error;

/// How long an ended forward counts in the estimate.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(10);
/// The most recent forwards the estimate looks at.
const RECENT: usize = 64;
/// The fewest recent forwards the estimate takes a percentile of: with
/// fewer, one slow forward would be the "90th percentile".
pub const MIN_RECENT: usize = 10;
/// Share of the recent forwards the estimate covers: their 90th percentile.
const QUANTILE: f64 = 0.9;

/// The late-answer policy of one unit.
#[derive(Debug)]
pub struct LateAnswers {
    /// The least confidence a late answer may have (`--answer-floor`).
    floor: f64,
    downstream: Downstream,
}

/// This unit's answer for a request's samples still waiting, marked
/// degraded: what a late answer gives.
#[derive(Debug)]
pub struct Held {
    pub answer: ComputationResponse,
    /// Samples it answers here that the units after would have answered.
    pub samples: u64,
}

impl LateAnswers {
    #[must_use]
    pub fn new(floor: f64) -> Self {
        Self {
            floor,
            downstream: Downstream::default(),
        }
    }

    /// The answer this unit holds for the samples it hands on (`answered`:
    /// its rows of the request, at `exit`), if every one of them clears the
    /// floor; `None` otherwise, or without rows (pickles).
    #[must_use]
    pub fn held(&self, answered: &Bytes, exit: u64) -> Option<Held> {
        let (answer, samples) = answer_here(answered, exit, self.floor)?;
        Some(Held { answer, samples })
    }

    /// Runs `forward` under the policy, with `held` this unit's answer for
    /// the samples it hands on (if it may give one): the forward's result,
    /// or `Late` when the held answer is to be given instead. `left` is
    /// what the call has left until `answer_by`, when a late answer is due.
    pub async fn watch(
        &self,
        held: Option<Held>,
        left: Duration,
        answer_by: Instant,
        forward: impl Future<Output = Result<ComputationResponse, Error>>,
    ) -> Watched {
        let Some(held) = held else {
            // No answer to give from here: the forward runs its course, and is measured.
            let began = Instant::now();
            let result = forward.await;
            self.downstream.ended(began.elapsed());
            return Watched::Forwarded(result);
        };
        if left.is_zero() || self.too_late_to_try(left) {
            return Watched::Late(held);
        }
        let watched = self.downstream.begin();
        let result = tokio::time::timeout_at(answer_by, forward).await;
        watched.ended();
        match result {
            // Not back when the late answer is due, or cannot be.
            Err(_) => Watched::Late(held),
            Ok(Err(error)) if cannot_answer(&error) => Watched::Late(held),
            Ok(result) => Watched::Forwarded(result),
        }
    }

    /// Whether to answer from here without trying: the units after this
    /// one have needed more than `left` lately, and a watched forward
    /// already out will tell when they are back.
    fn too_late_to_try(&self, left: Duration) -> bool {
        self.downstream.expected(Instant::now()) > left && self.downstream.out() > 0
    }
}

/// How a watched forward ended.
#[derive(Debug)]
pub enum Watched {
    /// It ran its course: its answer or its error.
    Forwarded(Result<ComputationResponse, Error>),
    /// The units after this one cannot answer in time: give this.
    Late(Held),
}

/// Whether a failed forward means that the units after this one cannot
/// answer the call in time, so that an answer held here is better than the
/// error: nothing of the next unit serves or could be reached, it refused
/// the call for load, the deadline passed on the way, or the call broke.
/// An answer the next unit gave about the request itself (a bad argument,
/// a refused threshold, a permission) passes on as it is.
#[must_use]
pub fn cannot_answer(error: &Error) -> bool {
    match error {
        Error::NextDown { .. } | Error::NextNotSent { .. } | Error::NextBroken { .. } | Error::NextDeadline { .. } => {
            true
        }
        Error::Next { code, .. } => matches!(
            code,
            Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
        ),
        Error::Backend(_) | Error::BadReply(_) => false,
    }
}

/// What the units after this one have needed lately.
#[derive(Debug, Default)]
pub struct Downstream {
    /// Ended forwards: when each ended and what it needed.
    recent: Mutex<VecDeque<(Instant, Duration)>>,
    /// Watched forwards still out, by id: when each began.
    outstanding: Mutex<HashMap<u64, Instant>>,
    next_id: AtomicU64,
}

/// A watched forward under way; it stops counting as outstanding when dropped.
#[derive(Debug)]
pub struct Forward<'a> {
    downstream: &'a Downstream,
    id: u64,
    began: Instant,
}

impl Forward<'_> {
    /// The forward ended (answered, failed, or given up for a late answer):
    /// the time it took counts, for one given up as the least it would have needed.
    pub fn ended(self) {
        self.downstream.ended(self.began.elapsed());
    }
}

impl Drop for Forward<'_> {
    fn drop(&mut self) {
        self.downstream
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Downstream {
    /// A forward that took `needed` has ended.
    fn ended(&self, needed: Duration) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.push_back((Instant::now(), needed));
        if recent.len() > RECENT {
            recent.pop_front();
        }
    }

    /// Marks a watched forward as begun now.
    pub fn begin(&self) -> Forward<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let began = Instant::now();
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, began);
        Forward {
            downstream: self,
            id,
            began,
        }
    }

    /// Watched forwards out now.
    #[must_use]
    pub fn out(&self) -> usize {
        self.outstanding.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The time a forward begun `now` is expected to need: the 90th
    /// percentile of the forwards that ended within [`REMEMBERED_FOR`] (at
    /// least [`MIN_RECENT`] of them), or the age of the oldest watched
    /// forward still out if longer; zero when neither is known.
    pub fn expected(&self, now: Instant) -> Duration {
        let mut needed: Vec<Duration> = self
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(ended, _)| now.saturating_duration_since(*ended) < REMEMBERED_FOR)
            .map(|&(_, needed)| needed)
            .collect();
        needed.sort_unstable();
        let recent = match needed.len() {
            n if n < MIN_RECENT => Duration::ZERO,
            n => needed[((n as f64 * QUANTILE).ceil() as usize).clamp(1, n) - 1],
        };
        let oldest = self
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .min()
            .map_or(Duration::ZERO, |&began| now.saturating_duration_since(began));
        recent.max(oldest)
    }
}

/// The request's answer from this unit's rows, every sample still waiting
/// answered at `exit`, when all of those are at least `floor` confident;
/// `None` otherwise (or when the rows cannot be read: a reply without them).
#[must_use]
pub fn answer_here(answered: &Bytes, exit: u64, floor: f64) -> Option<(ComputationResponse, u64)> {
    let mut rows = Answers::parse(answered, 0).ok()?;
    let waiting: Vec<usize> = (0..rows.exit_layer.len())
        .filter(|&i| rows.exit_layer[i] == 0)
        .collect();
    let confident = |i: usize| rows.confidence(i).is_some_and(|c| f64::from(c) >= floor);
    if waiting.is_empty() || !waiting.iter().all(|&i| confident(i)) {
        return None;
    }
    for &i in &waiting {
        rows.exit_layer[i] = i64::try_from(exit).ok()?;
    }
    let answer = ComputationResponse {
        status: StatusCode::Success as i32,
        exit_layer: rows.deepest_exit(),
        confidence: rows.min_confidence(),
        data: Some(Data::Result(rows.encode().ok()?.into())),
        degraded: true,
        ..ComputationResponse::default()
    };
    Some((answer, waiting.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` forwards that each took `took`.
    async fn answered(downstream: &Downstream, count: usize, took: Duration) {
        for _ in 0..count {
            let forward = downstream.begin();
            tokio::time::advance(took).await;
            forward.ended();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_forward_raises_the_estimate_and_old_ones_are_forgotten() {
        let downstream = Downstream::default();
        answered(&downstream, MIN_RECENT, Duration::from_millis(20)).await;
        assert_eq!(downstream.expected(Instant::now()), Duration::from_millis(20));
        let stalled = downstream.begin();
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(
            downstream.expected(Instant::now()),
            Duration::from_millis(300),
            "the forward still out counts before it is answered"
        );
        drop(stalled);
        tokio::time::advance(REMEMBERED_FOR).await;
        assert_eq!(
            downstream.expected(Instant::now()),
            Duration::ZERO,
            "forgotten: forwards resume"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_slow_forward_among_few_is_not_the_percentile() {
        let downstream = Downstream::default();
        answered(&downstream, 1, Duration::from_secs(2)).await;
        answered(&downstream, MIN_RECENT - 2, Duration::from_millis(20)).await;
        assert_eq!(
            downstream.expected(Instant::now()),
            Duration::ZERO,
            "under {MIN_RECENT} forwards, no percentile"
        );
        answered(&downstream, 1, Duration::from_secs(2)).await;
        assert_eq!(
            downstream.expected(Instant::now()),
            Duration::from_secs(2),
            "two of ten slow: the slowest tenth"
        );
    }

    /// A forward that never answers, for `watch`.
    async fn never() -> Result<ComputationResponse, Error> {
        std::future::pending().await
    }

    fn held() -> Option<Held> {
        Some(Held {
            answer: ComputationResponse::default(),
            samples: 1,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn without_trying_only_while_a_watched_forward_is_out_to_measure() {
        let late = LateAnswers::new(0.0);
        let left = Duration::from_millis(400);
        answered(&late.downstream, MIN_RECENT, Duration::from_secs(1)).await;
        // Slow lately, nothing out: this call tries (and measures).
        let probe = tokio::spawn(async move {
            let watched = late.watch(held(), left, Instant::now() + left, never()).await;
            (late, watched)
        });
        tokio::time::advance(Duration::from_millis(10)).await;
        tokio::task::yield_now().await;
        assert!(!probe.is_finished(), "the probe waits for the forward");
        tokio::time::advance(left).await;
        let (late, watched) = probe.await.expect("join");
        assert!(
            matches!(watched, Watched::Late(_)),
            "given up when the late answer is due"
        );
        // While a watched forward is out, the next call does not try.
        let out = late.downstream.begin();
        let started = Instant::now();
        let watched = late.watch(held(), left, Instant::now() + left, never()).await;
        assert!(matches!(watched, Watched::Late(_)));
        assert_eq!(started.elapsed(), Duration::ZERO, "answered at once");
        drop(out);
        // A forward without a held answer runs its course and is not "out".
        let unwatched = late.watch(None, left, Instant::now() + left, async {
            Err(Error::NextDown { address: "n:1".into() })
        });
        assert!(matches!(unwatched.await, Watched::Forwarded(Err(_))));
        assert_eq!(late.downstream.out(), 0);
    }

    #[test]
    fn what_the_next_unit_says_about_the_request_passes_on() {
        let next = |code| Error::Next {
            address: "n:1".into(),
            code,
            message: String::new(),
        };
        assert!(cannot_answer(&next(Code::ResourceExhausted)));
        assert!(cannot_answer(&next(Code::Unavailable)));
        assert!(cannot_answer(&Error::NextDown { address: "n:1".into() }));
        assert!(!cannot_answer(&next(Code::InvalidArgument)));
        assert!(!cannot_answer(&next(Code::PermissionDenied)));
    }

    fn rows(exits: &[i64], confidence: f32) -> Bytes {
        let mut probs = Vec::new();
        for _ in exits {
            let mut row = [(1.0 - confidence) / 9.0; 10];
            row[3] = confidence;
            probs.extend(row);
        }
        Answers {
            category: exits.iter().map(|_| 3).collect(),
            probs,
            exit_layer: exits.to_vec(),
        }
        .encode()
        .expect("encodes")
        .into()
    }

    #[test]
    fn answers_the_waiting_samples_here_only_above_the_floor() {
        let (answer, samples) = answer_here(&rows(&[8, 0, 0], 0.6), 8, 0.5).expect("answered here");
        assert_eq!(
            (answer.status, answer.exit_layer, answer.degraded, samples),
            (StatusCode::Success as i32, 8, true, 2)
        );
        let Some(Data::Result(result)) = answer.data else {
            panic!("a result")
        };
        assert_eq!(Answers::parse(&result, 0).expect("rows").exit_layer, vec![8, 8, 8]);
        assert!(answer_here(&rows(&[0, 0], 0.4), 8, 0.5).is_none(), "below the floor");
        assert!(answer_here(&Bytes::new(), 8, 0.0).is_none(), "no rows to answer with");
    }
}
