//! This exit's agreement with the last one on live traffic, and the
//! threshold that holds a target (`--shadow-rate`, `--target-agreement`;
//! docs/calibrate-and-plan.md, "Thresholds that hold a target").
//!
//! Outcomes come from both sides of the threshold, sampled at the shadow
//! rate on each: a sample answered here comes back from the last exit as
//! shadow work (`shadow`); a sample handed on comes back in the answer,
//! with the category the units after this one gave it (`record_handed_on`).
//! The window and the choice are `dnet_calibration::live`; this module
//! starts it where the unit's threshold is, applies its moves (the unit
//! gives its computation the threshold with each request, as an override
//! the computing side must accept: `--allow-threshold-override`), logs them
//! and shows the window on `/metrics`.
//!
//! One source per exit: with a target, the live calibration owns this
//! exit's threshold; `--thresholds` or `--thresholds-file` (or, for a
//! transmission unit, the first reply its computation computed) only give
//! where it starts.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

use dnet_calibration::live::{Decision, LiveCalibration, LiveSettings, Move};
use dnet_codec::bounds::OverrideBounds;
use dnet_codec::Answers;
use dnet_proto::HopRecord;
use prometheus_client::metrics::gauge::Gauge;
use tracing::{info, warn};

use crate::metrics::{ExitLabel, LiveMetrics, MoveLabel};

/// The side exits (1..15) whose thresholds a request carries.
const SIDE_EXITS: usize = 15;

/// What the live calibration aims for, and how it samples.
#[derive(Clone, Copy, Debug)]
pub struct AgreementSettings {
    /// The agreement to hold; `None`: measure only.
    pub target: Option<f64>,
    /// Where the threshold may go (`--threshold-range`).
    pub range: OverrideBounds,
    /// Outcomes in the window (`--agreement-window`).
    pub window: usize,
    /// Share of the samples on each side of the threshold whose outcome is
    /// recorded: the shadow rate, so that both sides are sampled alike.
    pub sample_rate: f64,
}

/// The windowed agreement and, with a target, this exit's threshold.
#[derive(Debug)]
pub struct Agreement {
    settings: AgreementSettings,
    /// Empty until this unit's exit and starting threshold are known.
    state: Mutex<Option<Started>>,
    metrics: LiveMetrics,
    /// `dnet_exit_threshold`: the threshold in force, with a target.
    threshold_gauge: Gauge<f64, AtomicU64>,
}

#[derive(Debug)]
struct Started {
    exit: u64,
    live: LiveCalibration,
}

impl Agreement {
    #[must_use]
    pub fn new(settings: AgreementSettings, metrics: LiveMetrics, threshold_gauge: Gauge<f64, AtomicU64>) -> Self {
        Self {
            settings,
            state: Mutex::default(),
            metrics,
            threshold_gauge,
        }
    }

    /// Starts at this unit's `exit` and `threshold` (from its
    /// configuration, `source` says which), once; later calls change nothing.
    pub fn start(&self, exit: u64, threshold: f64, source: &str) {
        if !(1..=SIDE_EXITS as u64).contains(&exit) {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.is_some() {
            return;
        }
        let settings = LiveSettings {
            target: self.settings.target,
            low: self.settings.range.low,
            high: self.settings.range.high,
            window: self.settings.window,
        };
        let live = match LiveCalibration::new(settings, threshold) {
            Ok(live) => live,
            Err(refused) => {
                // The flags were checked at start: this cannot happen.
                warn!(%refused, "the live calibration cannot start");
                return;
            }
        };
        if let Some(target) = self.settings.target {
            self.threshold_gauge.set(live.threshold());
            info!(exit, start = live.threshold(), from = source, target, range = %self.settings.range,
                window = self.settings.window,
                "this exit's threshold is held by --target-agreement from here on (one source: changes of \
                 --thresholds-file for this exit are not applied)");
        }
        *state = Some(Started { exit, live });
    }

    /// Starts from this unit's hop record in a reply its computation
    /// computed (a transmission unit learns its exit and threshold so);
    /// never from a refusal, whose record carries no threshold.
    pub fn start_from(&self, hop: &HopRecord) {
        if hop.batch_size > 0 {
            self.start(
                hop.exit_layer,
                hop.threshold,
                "the first reply its computation computed",
            );
        }
    }

    /// The thresholds to send with a request (the caller's `own`, or 1.0
    /// for the other exits), this exit's set by the live calibration;
    /// `None` without a target or before it has started.
    #[must_use]
    pub fn thresholds_for(&self, own: &[f64]) -> Option<Vec<f64>> {
        self.settings.target?;
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let started = state.as_ref()?;
        let mut thresholds = if own.len() == SIDE_EXITS {
            own.to_vec()
        } else {
            vec![1.0; SIDE_EXITS]
        };
        thresholds[usize::try_from(started.exit).ok()? - 1] = started.live.threshold();
        Some(thresholds)
    }

    /// Outcomes of the samples this unit handed on (`here`: its rows of a
    /// request, exit layer 0 where handed on) as the units after this one
    /// answered them (`answer`: every sample's row), each recorded at the
    /// sample rate. A sample answered late here says nothing of the last exit.
    pub fn record_handed_on(&self, here: &Answers, answer: &Answers) {
        if here.category.len() != answer.category.len() {
            return;
        }
        for i in (0..here.category.len()).filter(|&i| here.exit_layer[i] == 0) {
            let Some(confidence) = here.confidence(i) else { continue };
            if answer.exit_layer[i] <= 0 || fastrand::f64() >= self.settings.sample_rate {
                continue;
            }
            self.record(f64::from(confidence), here.category[i] == answer.category[i]);
        }
    }

    /// One outcome: a sample of `confidence` here, and whether the last
    /// exit agreed.
    pub fn record(&self, confidence: f64, agreed: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(started) = state.as_mut() else { return };
        if let Some(decision) = started.live.record(confidence, agreed) {
            self.show(started.exit, &decision);
        }
    }

    /// The gauges, and the log line of a move.
    fn show(&self, exit: u64, decision: &Decision) {
        let reading = decision.reading;
        let label = ExitLabel { exit };
        let live = &self.metrics;
        live.window
            .get_or_create(&label)
            .set(i64::try_from(reading.outcomes).unwrap_or(i64::MAX));
        live.agreement.get_or_create(&label).set(reading.agreement);
        live.proved.get_or_create(&label).set(reading.proved);
        live.early_share.get_or_create(&label).set(reading.early_share);
        if let Some(here) = reading.agreement_here {
            live.exit_agreement.get_or_create(&label).set(here);
        }
        let Some((way, from)) = decision.moved else { return };
        let direction = match way {
            Move::Raised => "raised",
            Move::Lowered => "lowered",
        };
        live.moves.get_or_create(&MoveLabel { exit, direction }).inc();
        self.threshold_gauge.set(reading.threshold);
        info!(
            exit,
            from,
            to = reading.threshold,
            direction,
            agreement = reading.agreement,
            proved = reading.proved,
            target = self.settings.target,
            early_share = reading.early_share,
            outcomes = reading.outcomes,
            "threshold changed"
        );
    }

    /// The threshold in force (for tests and logs).
    #[must_use]
    pub fn threshold(&self) -> Option<f64> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.as_ref().map(|started| started.live.threshold())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreement(target: Option<f64>) -> Agreement {
        let settings = AgreementSettings {
            target,
            range: OverrideBounds {
                low: 0.05,
                high: 0.9999,
            },
            window: 1_000,
            sample_rate: 1.0,
        };
        Agreement::new(settings, LiveMetrics::default(), Gauge::default())
    }

    #[test]
    fn a_refusal_does_not_say_where_to_start() {
        let agreement = agreement(Some(0.9));
        let refused = HopRecord {
            exit_layer: 8,
            threshold: 0.0,
            batch_size: 0,
            ..HopRecord::default()
        };
        agreement.start_from(&refused);
        assert_eq!(
            agreement.threshold(),
            None,
            "a refused request's record carries no threshold"
        );
        let computed = HopRecord {
            batch_size: 1,
            threshold: 0.6,
            ..refused
        };
        agreement.start_from(&computed);
        assert_eq!(agreement.threshold(), Some(0.6));
        let mut sent = agreement.thresholds_for(&[]).expect("a target");
        assert_eq!(sent.remove(7), 0.6);
        assert!(sent.iter().all(|&t| t == 1.0), "the other exits' entries are 1");
    }

    #[test]
    fn handed_on_samples_count_with_the_answer_they_got_and_late_ones_not() {
        let agreement = agreement(None);
        agreement.start(8, 0.5, "a test");
        let rows = |category: Vec<i64>, exit_layer: Vec<i64>| Answers {
            probs: category.iter().flat_map(|_| [0.1_f32; 10]).collect(),
            category,
            exit_layer,
        };
        // Sample 0 answered here; 1 and 2 handed on, 1 answered alike at 16,
        // 2 differently; 3 handed on and not answered after.
        let here = rows(vec![1, 2, 3, 4], vec![8, 0, 0, 0]);
        let answer = rows(vec![1, 2, 5, 4], vec![8, 16, 16, 0]);
        for _ in 0..10 {
            agreement.record_handed_on(&here, &answer);
        }
        let state = agreement.state.lock().expect("lock");
        let reading = state.as_ref().expect("started").live.reading();
        assert_eq!(reading.outcomes, 20, "two samples of each request");
        assert_eq!(
            reading.agreement, 1.0,
            "handed on, they end with the last exit's answer"
        );
    }
}
