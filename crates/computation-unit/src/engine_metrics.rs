//! The engine's Prometheus metrics (batch size, compute, queue wait,
//! callers gone), registered next to the unit's own and fed by the engine
//! as its observer; shadow work is labelled apart (`traffic`).

use std::time::Duration;

use dnet_common::labels::TrafficLabel;
use dnet_model::observer::EngineObserver;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Histograms by traffic, with one constructor for every series.
type ByTraffic = Family<TrafficLabel, Histogram, fn() -> Histogram>;

/// What the engine measures.
#[derive(Debug)]
pub struct EngineMetrics {
    /// Samples per forward pass.
    pub batch_size: ByTraffic,
    /// Time per forward pass (decision and encoding of its replies included).
    pub compute_seconds: ByTraffic,
    /// Time a request waited for its forward pass, from its arrival at the engine.
    pub queue_wait_seconds: ByTraffic,
    /// Requests settled without computing because their caller had gone.
    pub callers_gone: Family<TrafficLabel, Counter>,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            // 1 .. 4096 samples
            batch_size: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 13))),
            // 0.5 ms .. ~33 s
            compute_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 17))),
            // 0.1 ms .. ~52 s
            queue_wait_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 20))),
            callers_gone: Family::default(),
        }
    }
}

impl EngineMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        // Ordinary series from the start, so that a scrape reads 0 rather than nothing.
        let ordinary = TrafficLabel::of(false);
        let _ = metrics.batch_size.get_or_create(&ordinary);
        let _ = metrics.compute_seconds.get_or_create(&ordinary);
        let _ = metrics.queue_wait_seconds.get_or_create(&ordinary);
        let _ = metrics.callers_gone.get_or_create(&ordinary);
        registry.register(
            "dnet_batch_size",
            "Samples per forward pass",
            metrics.batch_size.clone(),
        );
        registry.register(
            "dnet_compute_seconds",
            "Time per forward pass, its replies' decisions and encoding included",
            metrics.compute_seconds.clone(),
        );
        registry.register(
            "dnet_queue_wait_seconds",
            "Time a request waited for its forward pass after reaching the engine",
            metrics.queue_wait_seconds.clone(),
        );
        registry.register(
            "dnet_callers_gone",
            "Requests settled without computing because their caller had gone (cancelled, or answered otherwise and dropped the call)",
            metrics.callers_gone.clone(),
        );
        metrics
    }
}

impl EngineObserver for EngineMetrics {
    fn forward(&self, samples: usize, took: Duration, shadow: bool) {
        let traffic = TrafficLabel::of(shadow);
        self.batch_size.get_or_create(&traffic).observe(samples as f64);
        self.compute_seconds.get_or_create(&traffic).observe(took.as_secs_f64());
    }

    fn waited(&self, waited: Duration, shadow: bool) {
        self.queue_wait_seconds
            .get_or_create(&TrafficLabel::of(shadow))
            .observe(waited.as_secs_f64());
    }

    fn caller_gone(&self, shadow: bool) {
        self.callers_gone.get_or_create(&TrafficLabel::of(shadow)).inc();
    }
}
