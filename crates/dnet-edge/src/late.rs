//! Answering from here when the rest of the cascade cannot make the deadline
//! (`--answer-when-late`, docs/architecture.md "Answers that beat the
//! deadline").
//!
//! [`Downstream`] keeps what the units after this one have needed lately:
//! how long each forward that was answered took (network and every unit
//! after this one), for [`REMEMBERED_FOR`], and when each forward still out
//! began. Its estimate is the slowest tenth of the recent forwards, or the
//! age of the oldest forward still out if that is longer: a next unit that
//! stalls raises the estimate before any answer comes back. A forward given
//! up for a late answer counts with the time it had taken (a lower bound of
//! what it needed), so the next calls are answered at once instead of
//! waiting as long. Once no forward has ended for a while the estimate falls
//! back to zero, so that forwards (which measure again) resume.
//!
//! [`answer_here`] turns this unit's rows of a request (`answered`: every
//! sample's category and probabilities at this exit) into the request's
//! answer, when every sample still waiting is at least as confident as the
//! floor.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dnet_codec::Answers;
use dnet_proto::{Bytes, ComputationResponse, Data, StatusCode};
use tokio::time::Instant;

/// How long an answered forward counts in the estimate.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(10);
/// The most recent forwards the estimate looks at.
const RECENT: usize = 64;
/// Share of the recent forwards the estimate covers: their 90th percentile.
const QUANTILE: f64 = 0.9;

/// What the units after this one have needed lately.
#[derive(Debug, Default)]
pub struct Downstream {
    /// Answered forwards: when each ended and how long it took.
    recent: Mutex<VecDeque<(Instant, Duration)>>,
    /// Forwards still out, by id: when each began.
    outstanding: Mutex<HashMap<u64, Instant>>,
    next_id: AtomicU64,
}

/// A forward under way; it stops counting as outstanding when dropped.
#[derive(Debug)]
pub struct Forward<'a> {
    downstream: &'a Downstream,
    id: u64,
    began: Instant,
}

impl Forward<'_> {
    /// The forward was answered: its time counts in the estimate.
    pub fn answered(self) {
        self.ended();
    }

    /// The forward was given up (the call answered from here): the time it
    /// had taken counts, as the least it would have needed.
    pub fn abandoned(self) {
        self.ended();
    }

    fn ended(&self) {
        let now = Instant::now();
        let mut recent = self.downstream.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.push_back((now, now - self.began));
        if recent.len() > RECENT {
            recent.pop_front();
        }
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
    /// Marks a forward as begun now.
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

    /// The time a forward begun `now` is expected to need: the 90th
    /// percentile of the forwards answered within [`REMEMBERED_FOR`], or the
    /// age of the oldest forward still out if longer; zero when neither is known.
    pub fn expected(&self, now: Instant) -> Duration {
        let mut times: Vec<Duration> = self
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(ended, _)| now.saturating_duration_since(*ended) < REMEMBERED_FOR)
            .map(|&(_, took)| took)
            .collect();
        times.sort_unstable();
        let recent = match times.len() {
            0 => Duration::ZERO,
            n => times[((n as f64 * QUANTILE).ceil() as usize).clamp(1, n) - 1],
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

    #[tokio::test(start_paused = true)]
    async fn a_stalled_forward_raises_the_estimate_and_old_ones_are_forgotten() {
        let downstream = Downstream::default();
        for _ in 0..10 {
            let forward = downstream.begin();
            tokio::time::advance(Duration::from_millis(20)).await;
            forward.answered();
        }
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
