//! How the engine forms batches from the requests waiting for the model.
//!
//! The policy (stated in `--help` and docs/architecture.md): when the model
//! is free, it takes the oldest waiting request and every later one with the
//! same start layer, in arrival order, while the batch has room for their
//! samples (`--max-batch-size`). A request larger than that runs alone. When
//! the batch is not full, the model waits up to `--batch-timeout` for more
//! requests of that start layer (0: it never waits). Requests of another
//! start layer keep their place for a later batch.
//!
//! Deadlines: a batch only grows while the forward it makes, as long as
//! forwards of that start layer have taken per sample lately, ends before
//! the earliest deadline in it; the requests left out wait for the next
//! batch. A request that would miss its deadline even alone is not computed
//! (nobody would read its answer). An estimate no forward has renewed for a
//! second holds nothing back, so a stall cannot stop a unit for good.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The batching settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most samples in one forward.
    pub max_samples: usize,
    /// How long a batch that is not full may wait for more.
    pub timeout: Duration,
}

/// What batching needs to know of a waiting request.
pub trait Batchable {
    /// Trunk layers already applied: requests batch only with their own kind.
    fn start(&self) -> usize;
    /// Samples the request counts toward the batch.
    fn samples(&self) -> usize;
    /// When nobody waits for its answer any more.
    fn deadline(&self) -> Option<Instant>;
}

/// What a forward costs, per start layer: a running average of the time per
/// sample that forwards took (recent ones weigh more), trusted only while
/// recent.
#[derive(Debug, Default)]
pub struct CostModel {
    per_start: HashMap<usize, Cost>,
}

#[derive(Debug, Clone, Copy)]
struct Cost {
    seconds_per_sample: f64,
    /// When the last forward of this start layer ended.
    observed: Instant,
}

/// Weight of the newest forward in the running average.
const COST_WEIGHT: f64 = 0.3;

/// How long an estimate is trusted without a forward to renew it. Estimates
/// only change when something is computed: one forward slowed by a stall
/// (SIGSTOP, swapping, a cold start) could otherwise make every request look
/// hopeless, so that nothing is ever computed again to correct it.
pub const TRUSTED_FOR: Duration = Duration::from_secs(1);

impl CostModel {
    /// Records a forward of `samples` from `start` that took `took` and ended `at`.
    pub fn observe(&mut self, start: usize, samples: usize, took: Duration, at: Instant) {
        let per_sample = took.as_secs_f64() / samples.max(1) as f64;
        self.per_start
            .entry(start)
            .and_modify(|cost| {
                cost.seconds_per_sample += COST_WEIGHT * (per_sample - cost.seconds_per_sample);
                cost.observed = at;
            })
            .or_insert(Cost {
                seconds_per_sample: per_sample,
                observed: at,
            });
    }

    /// The expected time of a forward of `samples` from `start`, as of `now`;
    /// zero when no forward of that start layer ended within [`TRUSTED_FOR`]
    /// (nothing is held back, and the next forward measures again).
    #[must_use]
    pub fn estimate(&self, start: usize, samples: usize, now: Instant) -> Duration {
        self.per_start
            .get(&start)
            .filter(|cost| now.saturating_duration_since(cost.observed) < TRUSTED_FOR)
            .map_or(Duration::ZERO, |cost| {
                Duration::from_secs_f64(cost.seconds_per_sample * samples as f64)
            })
    }
}

/// A batch sorted by what its deadlines allow.
#[derive(Debug)]
pub struct Fitted<J> {
    /// To compute now, in arrival order.
    pub run: Vec<J>,
    /// Would miss their deadline even alone: not computed.
    pub hopeless: Vec<J>,
    /// Would push the batch past an earlier deadline: back to wait, in order.
    pub later: Vec<J>,
}

/// Splits `batch` (one start layer) by what its deadlines allow from `now`,
/// as `cost` expects the forward to take.
pub fn fit_deadlines<J: Batchable>(batch: Vec<J>, now: Instant, cost: &CostModel) -> Fitted<J> {
    let mut fitted = Fitted {
        run: Vec::new(),
        hopeless: Vec::new(),
        later: Vec::new(),
    };
    let mut earliest: Option<Instant> = None;
    for job in batch {
        let alone = now + cost.estimate(job.start(), job.samples(), now);
        if job.deadline().is_some_and(|d| d <= alone) {
            fitted.hopeless.push(job);
            continue;
        }
        let earliest_with = match (earliest, job.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let ends = now + cost.estimate(job.start(), samples(&fitted.run) + job.samples(), now);
        if !fitted.run.is_empty() && earliest_with.is_some_and(|d| ends > d) {
            fitted.later.push(job);
        } else {
            earliest = earliest_with;
            fitted.run.push(job);
        }
    }
    fitted
}

/// Samples in `batch`.
pub fn samples<J: Batchable>(batch: &[J]) -> usize {
    batch.iter().map(Batchable::samples).sum()
}

/// Whether `job` may join `batch` (same start layer, room for its samples).
pub fn fits<J: Batchable>(batch: &[J], job: &J, max_samples: usize) -> bool {
    batch
        .first()
        .is_some_and(|first| first.start() == job.start() && samples(batch) + job.samples() <= max_samples)
}

/// The next batch: the oldest waiting job, then every later one that fits,
/// in arrival order; the others stay waiting, in their order.
pub fn take<J: Batchable>(waiting: &mut VecDeque<J>, max_samples: usize) -> Vec<J> {
    let Some(first) = waiting.pop_front() else {
        return Vec::new();
    };
    let mut batch = vec![first];
    let mut kept = VecDeque::with_capacity(waiting.len());
    while let Some(job) = waiting.pop_front() {
        if fits(&batch, &job, max_samples) {
            batch.push(job);
        } else {
            kept.push_back(job);
        }
    }
    *waiting = kept;
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Job(usize, usize, &'static str, Option<Instant>);

    impl Batchable for Job {
        fn start(&self) -> usize {
            self.0
        }
        fn samples(&self) -> usize {
            self.1
        }
        fn deadline(&self) -> Option<Instant> {
            self.3
        }
    }

    fn names(jobs: &[Job]) -> Vec<&'static str> {
        jobs.iter().map(|j| j.2).collect()
    }

    #[test]
    fn the_oldest_job_decides_the_start_layer_and_others_keep_their_order() {
        let mut waiting: VecDeque<Job> = [
            Job(8, 1, "a", None),
            Job(0, 1, "b", None),
            Job(8, 2, "c", None),
            Job(0, 1, "d", None),
        ]
        .into();
        assert_eq!(names(&take(&mut waiting, 32)), ["a", "c"]);
        assert_eq!(names(waiting.make_contiguous()), ["b", "d"]);
        assert_eq!(names(&take(&mut waiting, 32)), ["b", "d"]);
        assert!(take(&mut waiting, 32).is_empty());
    }

    #[test]
    fn a_batch_stops_at_its_sample_limit_and_a_large_request_runs_alone() {
        let mut waiting: VecDeque<Job> = [
            Job(0, 3, "a", None),
            Job(0, 2, "b", None),
            Job(0, 1, "c", None),
            Job(0, 9, "d", None),
        ]
        .into();
        assert_eq!(
            names(&take(&mut waiting, 4)),
            ["a", "c"],
            "b does not fit beside a; c does"
        );
        assert_eq!(names(&take(&mut waiting, 4)), ["b"]);
        assert_eq!(names(&take(&mut waiting, 4)), ["d"], "larger than the limit: alone");
    }

    #[test]
    fn a_batch_grows_only_while_it_ends_before_its_earliest_deadline() {
        let now = Instant::now();
        let mut cost = CostModel::default();
        cost.observe(0, 1, Duration::from_millis(10), now);
        let due = |ms| Some(now + Duration::from_millis(ms));
        let batch = vec![
            Job(0, 1, "a", due(35)),
            Job(0, 1, "b", None),
            Job(0, 2, "c", due(100)),
            Job(0, 1, "d", due(5)),
            Job(0, 1, "e", due(1000)),
        ];
        let fitted = fit_deadlines(batch, now, &cost);
        // a+b end at 20 ms < 35; c would make 40 > 35: later; d cannot make 5 ms even alone;
        // e (30 ms) still ends before a's 35 ms.
        assert_eq!(names(&fitted.run), ["a", "b", "e"]);
        assert_eq!(names(&fitted.later), ["c"]);
        assert_eq!(names(&fitted.hopeless), ["d"]);
    }

    #[test]
    fn an_estimate_no_forward_renewed_holds_nothing_back() {
        // A forward stalled for 3 s makes a 100 ms request hopeless at once;
        // a second later, with nothing computed since, it runs and measures again.
        let stalled = Instant::now();
        let mut cost = CostModel::default();
        cost.observe(0, 1, Duration::from_secs(3), stalled);
        let job = |now: Instant| vec![Job(0, 1, "a", Some(now + Duration::from_millis(100)))];
        assert_eq!(names(&fit_deadlines(job(stalled), stalled, &cost).hopeless), ["a"]);
        let later = stalled + TRUSTED_FOR;
        assert_eq!(names(&fit_deadlines(job(later), later, &cost).run), ["a"]);
    }

    #[test]
    fn without_a_measured_forward_nothing_is_held_back() {
        let now = Instant::now();
        let batch = vec![
            Job(0, 1, "a", Some(now + Duration::from_millis(1))),
            Job(0, 1, "b", None),
        ];
        let fitted = fit_deadlines(batch, now, &CostModel::default());
        assert_eq!(names(&fitted.run), ["a", "b"]);
    }
}
