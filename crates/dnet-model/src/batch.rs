//! How the engine forms batches from the requests waiting for the model.
//!
//! The policy (stated in `--help` and docs/architecture.md): when the model
//! is free, it takes the oldest waiting request and every later one with the
//! same start layer, in arrival order, while the batch has room for their
//! samples (`--max-batch-size`). A request larger than that runs alone. When
//! the batch is not full, the model waits up to `--batch-timeout` for more
//! requests of that start layer (0: it never waits). Requests of another
//! start layer keep their place for a later batch.

use std::collections::VecDeque;
use std::time::Duration;

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
    struct Job(usize, usize, &'static str);

    impl Batchable for Job {
        fn start(&self) -> usize {
            self.0
        }
        fn samples(&self) -> usize {
            self.1
        }
    }

    fn names(jobs: &[Job]) -> Vec<&'static str> {
        jobs.iter().map(|j| j.2).collect()
    }

    #[test]
    fn the_oldest_job_decides_the_start_layer_and_others_keep_their_order() {
        let mut waiting: VecDeque<Job> = [Job(8, 1, "a"), Job(0, 1, "b"), Job(8, 2, "c"), Job(0, 1, "d")].into();
        assert_eq!(names(&take(&mut waiting, 32)), ["a", "c"]);
        assert_eq!(names(waiting.make_contiguous()), ["b", "d"]);
        assert_eq!(names(&take(&mut waiting, 32)), ["b", "d"]);
        assert!(take(&mut waiting, 32).is_empty());
    }

    #[test]
    fn a_batch_stops_at_its_sample_limit_and_a_large_request_runs_alone() {
        let mut waiting: VecDeque<Job> = [Job(0, 3, "a"), Job(0, 2, "b"), Job(0, 1, "c"), Job(0, 9, "d")].into();
        assert_eq!(
            names(&take(&mut waiting, 4)),
            ["a", "c"],
            "b does not fit beside a; c does"
        );
        assert_eq!(names(&take(&mut waiting, 4)), ["b"]);
        assert_eq!(names(&take(&mut waiting, 4)), ["d"], "larger than the limit: alone");
    }
}
