//! Prometheus metrics of a unit's gRPC edge.

pub use dnet_common::labels::{StatusLabel, Traffic, TrafficLabel};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The edge's metrics; cheap to update from any task. Metrics that shadow
/// work touches are labelled `traffic="ordinary"|"shadow"`.
#[derive(Debug)]
pub struct Metrics {
    /// Compute calls by how they ended.
    pub requests: Family<StatusLabel, Counter>,
    /// Publish to reply on the unit's own queue.
    pub queue_round_trip: Family<TrafficLabel, Histogram, fn() -> Histogram>,
    /// Ordinary calls to the next unit, including its whole cascade (shadow
    /// work is not what callers wait for).
    pub forward: Histogram,
    /// Compute calls being handled now.
    pub in_flight: Family<TrafficLabel, Gauge>,
    /// Entries in the correlation map (calls waiting for a queue reply).
    pub pending_replies: Gauge,
    /// Replies dropped because no call waited for them (late or duplicate).
    pub late_replies: Counter,
    /// Messages waiting in the unit's queue, as last read.
    pub queue_waiting: Gauge,
    /// Addresses of the next unit that accepted a connection at the last check.
    pub next_addresses: Gauge,
    /// Attempts repeated after UNAVAILABLE, by what was retried (queue, next).
    pub retries: Family<TargetLabel, Counter>,
    /// Calls whose caller asked for a deadline past `--max-deadline`.
    pub deadline_clamped: Counter,
    /// gRPC connections open now.
    pub connections: Gauge,
    /// gRPC connections closed on arrival: `--max-connections` were open.
    pub connections_refused: Counter,
    /// Samples answered at this exit because the units after it could not
    /// have answered before the deadline (`--answer-when-late`).
    pub late_answers: Family<ExitLabel, Counter>,
    /// Shadow samples by outcome (agreed, disagreed, dropped, failed).
    pub shadow: Family<OutcomeLabel, Counter>,
    /// The live calibration's window (`agreement`), by exit.
    pub live: LiveMetrics,
}

/// What the live calibration's window shows (`--shadow-rate`,
/// `--target-agreement`), each by exit.
#[derive(Clone, Debug, Default)]
pub struct LiveMetrics {
    /// Of the window's samples answered here, the share the last exit agreed with.
    pub exit_agreement: Family<ExitLabel, Gauge<f64, AtomicU64>>,
    /// Of all the window's samples, the share that end with the last exit's
    /// answer at the threshold in force (what `--target-agreement` holds).
    pub agreement: Family<ExitLabel, Gauge<f64, AtomicU64>>,
    /// Its one-sided 95% bounds (`bound="lower"`: the target is proved while
    /// this is at least the target; `"upper"`: proved missed once this falls under it).
    pub bound: Family<BoundLabel, Gauge<f64, AtomicU64>>,
    /// Share of the window's samples answered here at the threshold in force.
    pub early_share: Family<ExitLabel, Gauge<f64, AtomicU64>>,
    /// Outcomes in the window.
    pub window: Family<ExitLabel, Gauge>,
    /// Outcomes taken in all.
    pub outcomes: Family<ExitLabel, Counter>,
    /// Threshold moves, by direction (raised, lowered).
    pub moves: Family<MoveLabel, Counter>,
}

/// Label of `dnet_live_agreement_bound`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BoundLabel {
    pub exit: u64,
    pub bound: &'static str,
}

/// Label of `dnet_threshold_moves`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MoveLabel {
    pub exit: u64,
    pub direction: &'static str,
}

/// Label of the per-exit metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExitLabel {
    pub exit: u64,
}

/// Label of `dnet_shadow`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Label of `dnet_retries`: what was tried again.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: &'static str,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            queue_round_trip: Family::new_with_constructor(seconds_histogram),
            forward: seconds_histogram(),
            in_flight: Family::default(),
            pending_replies: Gauge::default(),
            late_replies: Counter::default(),
            queue_waiting: Gauge::default(),
            next_addresses: Gauge::default(),
            retries: Family::default(),
            deadline_clamped: Counter::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            late_answers: Family::default(),
            shadow: Family::default(),
            live: LiveMetrics::default(),
        };
        registry.register(
            "dnet_requests",
            "Compute calls by final status",
            metrics.requests.clone(),
        );
        registry.register(
            "dnet_queue_round_trip_seconds",
            "Publish to reply on the unit's RabbitMQ queue",
            metrics.queue_round_trip.clone(),
        );
        registry.register(
            "dnet_forward_seconds",
            "Ordinary calls forwarded to the next unit, its whole cascade included",
            metrics.forward.clone(),
        );
        registry.register(
            "dnet_in_flight",
            "Compute calls being handled",
            metrics.in_flight.clone(),
        );
        registry.register(
            "dnet_pending_replies",
            "Calls waiting for a reply on the queue (correlation map size)",
            metrics.pending_replies.clone(),
        );
        registry.register(
            "dnet_late_replies",
            "Replies dropped because no call waited for them (late or duplicate)",
            metrics.late_replies.clone(),
        );
        registry.register(
            "dnet_queue_waiting",
            "Messages waiting in the unit's queue, as last read (every 250 ms)",
            metrics.queue_waiting.clone(),
        );
        registry.register(
            "dnet_next_addresses",
            "Addresses of the next unit calls are spread over (those whose grpc.health says SERVING)",
            metrics.next_addresses.clone(),
        );
        registry.register(
            "dnet_retries",
            "Attempts repeated after UNAVAILABLE within the call's deadline, by target (queue, next)",
            metrics.retries.clone(),
        );
        registry.register(
            "dnet_deadline_clamped",
            "Calls whose caller's deadline was cut to --max-deadline",
            metrics.deadline_clamped.clone(),
        );
        registry.register("dnet_connections", "gRPC connections open", metrics.connections.clone());
        registry.register(
            "dnet_connections_refused",
            "gRPC connections closed on arrival because --max-connections were open",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "dnet_late_answers",
            "Samples answered at this exit because the units after it could not have answered before the deadline (--answer-when-late)",
            metrics.late_answers.clone(),
        );
        registry.register(
            "dnet_shadow",
            "Shadow samples (--shadow-rate) by outcome: agreed or disagreed with the last exit, dropped under load, failed",
            metrics.shadow.clone(),
        );
        metrics.live.register(registry);
        metrics
    }

    /// Counts one shadow sample by outcome.
    pub fn shadow(&self, outcome: &'static str) {
        self.shadow_n(outcome, 1);
    }

    /// Counts `samples` shadow samples by outcome.
    pub fn shadow_n(&self, outcome: &'static str, samples: u64) {
        self.shadow.get_or_create(&OutcomeLabel { outcome }).inc_by(samples);
    }

    /// Marks a call in flight until the returned guard is dropped (also when
    /// the caller cancels and the handler future is dropped).
    #[must_use]
    pub fn enter(&self, traffic: Traffic) -> InFlight {
        let gauge = self.in_flight.get_or_create(&TrafficLabel { traffic }).clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// Counts one retried attempt at `target`.
    pub fn retried(&self, target: &'static str) {
        self.retries.get_or_create(&TargetLabel { target }).inc();
    }

    /// Counts one finished call.
    pub fn count(&self, status: &str, traffic: Traffic) {
        self.requests.get_or_create(&StatusLabel::new(status, traffic)).inc();
    }

    /// Calls being handled now, shadow work included.
    #[must_use]
    pub fn calls_in_flight(&self) -> i64 {
        [Traffic::ordinary, Traffic::shadow]
            .into_iter()
            .filter_map(|traffic| self.in_flight.get(&TrafficLabel { traffic }).map(|gauge| gauge.get()))
            .sum()
    }

    /// Observes a round trip to the unit's own computation.
    pub fn round_trip(&self, traffic: Traffic, seconds: f64) {
        self.queue_round_trip
            .get_or_create(&TrafficLabel { traffic })
            .observe(seconds);
    }
}

impl LiveMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "dnet_exit_agreement",
            "Of the live calibration window's samples answered at this exit, the share the last exit agreed with",
            self.exit_agreement.clone(),
        );
        registry.register(
            "dnet_live_agreement",
            "Of all the live calibration window's samples, the share that end with the last exit's answer at the threshold in force (what --target-agreement holds)",
            self.agreement.clone(),
        );
        registry.register(
            "dnet_live_agreement_bound",
            "One-sided 95% Wilson bounds of dnet_live_agreement: lower (the target is proved while it is at least the target), upper (the target is proved missed, and the threshold raised, once it falls under it)",
            self.bound.clone(),
        );
        registry.register(
            "dnet_live_early_share",
            "Share of the live calibration window's samples answered at this exit at the threshold in force",
            self.early_share.clone(),
        );
        registry.register(
            "dnet_live_window",
            "Outcomes in the live calibration window (--agreement-window at most)",
            self.window.clone(),
        );
        registry.register(
            "dnet_live_outcomes",
            "Outcomes the live calibration took in all (after a change of the traffic, its window describes the new traffic once a window more has come)",
            self.outcomes.clone(),
        );
        registry.register(
            "dnet_threshold_moves",
            "Moves of this exit's threshold by --target-agreement: raised (the window proved the target missed) or lowered (it proved the target at a lower one)",
            self.moves.clone(),
        );
    }
}

/// 100 us .. ~52 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Decrements `dnet_in_flight` when dropped.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
