//! This exit's agreement with the last one, as shadow work measures it, and
//! the threshold that holds a target (`--target-agreement`;
//! docs/calibrate-and-plan.md, "Thresholds that hold a target").
//!
//! The window holds the last [`WINDOW`] shadow outcomes: for a sample
//! answered here, its confidence here and whether the last exit gave the
//! same category. Every [`STEP_EVERY`] new outcomes the controller decides,
//! on the gap to certainty `g = 1 - threshold` and on what the window shows
//! for sure: the lower bound of the agreement's one-sided 95% (Wilson)
//! interval, so that a window that agrees by luck does not pass:
//! - bound below the target: `g` halves (the threshold rises), and the
//!   outcomes below the new threshold leave the window (those samples go on
//!   from now on);
//! - bound above the target by half its distance to 1 or more: `g` grows by
//!   a quarter (the threshold falls, answering more here);
//! - otherwise the threshold holds.
//!
//! Rising fast and falling slowly, with a dead band between, keeps it from
//! oscillating; each decision rests on fresh outcomes; the threshold stays in
//! `--threshold-range`. The unit applies it by giving its own computation
//! the threshold with each request (a request override, which the computing
//! side must accept: `--allow-threshold-override`).

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

use dnet_codec::bounds::OverrideBounds;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tracing::info;

use crate::metrics::ExitLabel;

/// Shadow outcomes the agreement is measured over.
pub const WINDOW: usize = 200;
/// New outcomes between two decisions.
pub const STEP_EVERY: usize = 20;
/// The side exits (1..15) whose thresholds a request carries.
const SIDE_EXITS: usize = 15;
/// The normal quantile of the one-sided 95% bound the controller decides on.
const Z: f64 = 1.645;

/// What the controller aims for.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub agreement: f64,
    pub range: OverrideBounds,
}

/// The windowed agreement and, with a target, this exit's threshold.
#[derive(Debug)]
pub struct Agreement {
    target: Option<Target>,
    state: Mutex<State>,
    agreement_gauge: Family<ExitLabel, Gauge<f64, AtomicU64>>,
    threshold_gauge: Gauge<f64, AtomicU64>,
}

#[derive(Debug, Default)]
struct State {
    /// (confidence here, agreed with the last exit), newest last.
    window: VecDeque<(f64, bool)>,
    /// Outcomes since the last decision.
    fresh: usize,
    /// This unit's exit and current threshold, learnt from its computation's
    /// hop records (the first one sets where the controller starts).
    exit: Option<u64>,
    threshold: Option<f64>,
}

impl Agreement {
    /// `agreement_gauge` and `threshold_gauge` are exported as
    /// `dnet_exit_agreement` and `dnet_exit_threshold`.
    #[must_use]
    pub fn new(
        target: Option<Target>,
        agreement_gauge: Family<ExitLabel, Gauge<f64, AtomicU64>>,
        threshold_gauge: Gauge<f64, AtomicU64>,
    ) -> Self {
        Self {
            target,
            state: Mutex::default(),
            agreement_gauge,
            threshold_gauge,
        }
    }

    /// Learns this unit's exit and threshold from its computation's hop
    /// record (once: afterwards the controller owns the threshold).
    pub fn learn(&self, exit: u64, threshold: f64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.exit.is_some() || !(1..=15).contains(&exit) {
            return;
        }
        state.exit = Some(exit);
        let start = self
            .target
            .map_or(threshold, |t| threshold.clamp(t.range.low, t.range.high));
        state.threshold = Some(start);
        self.threshold_gauge.set(start);
        if let Some(target) = self.target {
            info!(exit, threshold = start, target = target.agreement, range = %target.range,
                "holding this exit's agreement with the last at the target");
        }
    }

    /// The thresholds to send with a request (the caller's `own`, or 1.0
    /// for the other exits), this exit's set by the controller; `None`
    /// without a target or before the exit is known.
    #[must_use]
    pub fn thresholds_for(&self, own: &[f64]) -> Option<Vec<f64>> {
        self.target?;
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (exit, threshold) = (state.exit?, state.threshold?);
        let mut thresholds = if own.len() == SIDE_EXITS {
            own.to_vec()
        } else {
            vec![1.0; SIDE_EXITS]
        };
        thresholds[usize::try_from(exit).ok()? - 1] = threshold;
        Some(thresholds)
    }

    /// One shadow outcome: a sample answered here with `confidence`, and
    /// whether the last exit agreed.
    pub fn record(&self, confidence: f64, agreed: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.window.push_back((confidence, agreed));
        if state.window.len() > WINDOW {
            state.window.pop_front();
        }
        state.fresh += 1;
        let measured = agreement(&state.window);
        if let Some(exit) = state.exit {
            self.agreement_gauge.get_or_create(&ExitLabel { exit }).set(measured);
        }
        if state.fresh >= STEP_EVERY {
            state.fresh = 0;
            if let Some(target) = self.target {
                let bound = lower_bound(&state.window);
                self.decide(&mut state, target, measured, bound);
            }
        }
    }

    /// Moves the threshold on `bound`, the agreement's lower bound
    /// (`measured`: the windowed agreement, for the log).
    fn decide(&self, state: &mut State, target: Target, measured: f64, bound: f64) {
        let Some(threshold) = state.threshold else {
            return;
        };
        let gap = 1.0 - threshold;
        let wanted = if bound < target.agreement {
            1.0 - gap / 2.0
        } else if bound >= target.agreement + (1.0 - target.agreement) / 2.0 {
            1.0 - gap * 1.25
        } else {
            threshold
        };
        let next = wanted.clamp(target.range.low, target.range.high);
        if (next - threshold).abs() < f64::EPSILON {
            return;
        }
        if next > threshold {
            // Those samples are no longer answered here.
            state.window.retain(|&(confidence, _)| confidence >= next);
        }
        state.threshold = Some(next);
        self.threshold_gauge.set(next);
        info!(
            exit = state.exit,
            from = threshold,
            to = next,
            agreement = measured,
            lower_bound = bound,
            target = target.agreement,
            outcomes = state.window.len(),
            "threshold changed"
        );
    }

    /// The current threshold the controller sends (for tests and logs).
    #[must_use]
    pub fn threshold(&self) -> Option<f64> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).threshold
    }
}

fn agreement(window: &VecDeque<(f64, bool)>) -> f64 {
    if window.is_empty() {
        return 1.0;
    }
    window.iter().filter(|(_, agreed)| *agreed).count() as f64 / window.len() as f64
}

/// The lower end of the one-sided 95% Wilson interval of the windowed agreement.
fn lower_bound(window: &VecDeque<(f64, bool)>) -> f64 {
    if window.is_empty() {
        return 0.0;
    }
    let n = window.len() as f64;
    let p = agreement(window);
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    (centre - spread) / (1.0 + z2 / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controlled(target: f64) -> Agreement {
        let agreement = Agreement::new(
            Some(Target {
                agreement: target,
                range: OverrideBounds { low: 0.0, high: 0.999 },
            }),
            Family::default(),
            Gauge::default(),
        );
        agreement.learn(8, 0.2);
        agreement
    }

    /// Samples whose confidence c agrees with probability c (a calibrated
    /// exit), spread over the confidences the threshold lets through.
    fn feed(agreement: &Agreement, outcomes: usize) {
        for i in 0..outcomes {
            let threshold = agreement.threshold().expect("known");
            let c = threshold + (1.0 - threshold) * ((i * 37 % 100) as f64 + 0.5) / 100.0;
            agreement.record(c, ((i * 61 % 100) as f64) / 100.0 < c);
        }
    }

    #[test]
    fn a_threshold_far_too_low_rises_until_the_target_holds_and_stays() {
        let agreement = controlled(0.95);
        feed(&agreement, 400);
        let risen = agreement.threshold().expect("known");
        assert!(
            risen >= 0.9,
            "a calibrated exit needs a threshold near 0.9 for 0.95: {risen}"
        );
        feed(&agreement, 400);
        let later = agreement.threshold().expect("known");
        assert!(
            (later - risen).abs() <= 0.1,
            "it holds, not swings: {risen} then {later}"
        );
        let mut thresholds = agreement.thresholds_for(&[]).expect("a target");
        assert_eq!(thresholds.remove(7), later);
        assert!(thresholds.iter().all(|&t| t == 1.0), "the other exits' entries are 1");
    }

    #[test]
    fn the_bound_is_below_the_share_and_tightens_with_more_outcomes() {
        let window = |n: usize| -> VecDeque<(f64, bool)> { (0..n).map(|i| (0.9, i % 10 != 0)).collect() };
        let (small, large) = (lower_bound(&window(20)), lower_bound(&window(200)));
        assert!(small < large && large < 0.9, "{small} < {large} < 0.9");
        assert!(
            (large - 0.860).abs() < 0.001,
            "Wilson's bound for 180 of 200 at z = 1.645: {large}"
        );
    }

    #[test]
    fn without_a_target_it_only_measures() {
        let agreement = Agreement::new(None, Family::default(), Gauge::default());
        agreement.learn(8, 0.3);
        for i in 0..100 {
            agreement.record(0.5, i % 4 != 0);
        }
        assert_eq!(agreement.threshold(), Some(0.3));
        assert!(agreement.thresholds_for(&[]).is_none());
    }
}
