//! The engine's Prometheus metrics (batch size, compute, queue wait),
//! registered next to the unit's own and fed by the engine as its observer.

use std::time::Duration;

use dnet_model::observer::EngineObserver;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What the engine measures.
#[derive(Debug)]
pub struct EngineMetrics {
    /// Samples per forward pass.
    pub batch_size: Histogram,
    /// Time per forward pass (decision and encoding of its replies included).
    pub compute_seconds: Histogram,
    /// Time a request waited for its forward pass, from its arrival at the engine.
    pub queue_wait_seconds: Histogram,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            // 1 .. 4096 samples
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // 0.5 ms .. ~33 s
            compute_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 17)),
            // 0.1 ms .. ~52 s
            queue_wait_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
        }
    }
}

impl EngineMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
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
        metrics
    }
}

impl EngineObserver for EngineMetrics {
    fn forward(&self, samples: usize, took: Duration) {
        self.batch_size.observe(samples as f64);
        self.compute_seconds.observe(took.as_secs_f64());
    }

    fn waited(&self, waited: Duration) {
        self.queue_wait_seconds.observe(waited.as_secs_f64());
    }
}
