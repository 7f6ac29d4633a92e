//! The worker's Prometheus metrics (the engine registers its own).

use std::sync::Arc;

use dnet_common::labels::{StatusLabel, Traffic};
use dnet_proto::{ComputationResponse, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The statuses a reply can have.
const REPLY_STATUSES: [StatusCode; 3] = [StatusCode::Success, StatusCode::NotSuccess, StatusCode::Error];

/// What the worker counts.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Replies the broker confirmed, by status.
    replies: Family<StatusLabel, Counter>,
    /// Requests this worker gave back to the queue.
    pub requeued: Counter,
    /// Replies the broker refused or that could not be published.
    pub unpublished_replies: Counter,
    /// Deliveries that came with the redelivered flag: a worker before this
    /// one ended while holding them.
    pub redelivered: Counter,
    /// Requests skipped because their deadline had passed.
    pub expired: Counter,
    /// Requests answered ERROR because they stopped --max-attempts workers.
    pub poisoned: Counter,
    /// Requests dropped (rejected without requeue, not computed) because they carried
    /// no reply_to or correlation id: nobody could receive their answer.
    pub unanswerable: Counter,
}

impl WorkerMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self {
            replies: Family::default(),
            requeued: Counter::default(),
            unpublished_replies: Counter::default(),
            redelivered: Counter::default(),
            expired: Counter::default(),
            poisoned: Counter::default(),
            unanswerable: Counter::default(),
        };
        // Every ordinary status from the start, so that a scrape reads 0 rather than nothing.
        for status in REPLY_STATUSES {
            let _ = metrics
                .replies
                .get_or_create(&StatusLabel::new(status.as_str_name(), Traffic::ordinary));
        }
        registry.register(
            "dnet_worker_replies",
            "Replies published (confirmed by the broker), by status and traffic (ordinary, shadow)",
            metrics.replies.clone(),
        );
        registry.register(
            "dnet_worker_requeued",
            "Requests this worker gave back to the queue",
            metrics.requeued.clone(),
        );
        registry.register(
            "dnet_worker_unpublished_replies",
            "Replies the broker refused or that could not be published (their requests went back to the queue)",
            metrics.unpublished_replies.clone(),
        );
        registry.register(
            "dnet_worker_redelivered",
            "Deliveries that arrived with the redelivered flag (a worker ended while holding them)",
            metrics.redelivered.clone(),
        );
        registry.register(
            "dnet_expired",
            "Requests skipped, not computed, because their deadline had passed",
            metrics.expired.clone(),
        );
        registry.register(
            "dnet_worker_poisoned",
            "Requests answered ERROR because they had stopped --max-attempts workers",
            metrics.poisoned.clone(),
        );
        registry.register(
            "dnet_worker_unanswerable",
            "Requests dropped uncomputed because they carried no reply_to or correlation id (nobody could receive an answer)",
            metrics.unanswerable.clone(),
        );
        Arc::new(metrics)
    }

    /// Counts a reply the broker confirmed (to shadow work or not).
    pub fn count_reply(&self, response: &ComputationResponse, shadow: bool) {
        let status = StatusCode::try_from(response.status).map_or("UNKNOWN", |s| s.as_str_name());
        self.replies
            .get_or_create(&StatusLabel::new(status, Traffic::of(shadow)))
            .inc();
    }

    /// (replies published, requests requeued) so far, for the stop summary.
    #[must_use]
    pub fn totals(&self) -> (u64, u64) {
        let published = REPLY_STATUSES
            .iter()
            .flat_map(|status| [Traffic::ordinary, Traffic::shadow].map(|traffic| (status, traffic)))
            .filter_map(|(status, traffic)| {
                self.replies
                    .get(&StatusLabel::new(status.as_str_name(), traffic))
                    .map(|counter| counter.get())
            })
            .sum();
        (published, self.requeued.get())
    }
}
