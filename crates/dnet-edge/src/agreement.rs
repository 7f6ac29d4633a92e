//! This exit's agreement with the last one on live traffic, and the
//! threshold that holds a target (`--shadow-rate`, `--target-agreement`;
//! docs/calibrate-and-plan.md, "Thresholds that hold a target").
//!
//! Outcomes come from both sides of the threshold, sampled alike: a sample
//! answered here comes back from the last exit as shadow work (`shadow`),
//! at the shadow rate, unless it is dropped under load; a sample handed on
//! comes back in the answer, with the category the units after this one
//! gave it (`record_handed_on`), and is recorded at the shadow rate times
//! the share of shadow samples that came back lately. Were the two sides
//! sampled unlike, the window would overrate the agreement: every dropped
//! shadow sample removes a sample answered here, which is where the
//! disagreements are.
//!
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use dnet_calibration::live::{Decision, LiveCalibration, LiveSettings, Move};
use dnet_codec::bounds::OverrideBounds;
use dnet_codec::Answers;
use dnet_proto::HopRecord;
use prometheus_client::metrics::gauge::Gauge;
use tracing::{info, warn};

use crate::metrics::{BoundLabel, ExitLabel, LiveMetrics, MoveLabel};

/// The side exits (1..15) whose thresholds a request carries.
const SIDE_EXITS: usize = 15;
/// Shadow samples the share that came back is measured over (halved as it
/// passes this, so that it follows the last few thousand).
const SURVIVAL_SPAN: f64 = 4_000.0;

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
    /// This unit's exit, once known.
    exit: OnceLock<u64>,
    /// The threshold in force (f64 bits), read by every request without
    /// waiting for a decision.
    threshold: AtomicU64,
    /// Empty until this unit's exit and starting threshold are known.
    live: Mutex<Option<LiveCalibration>>,
    /// Shadow samples sent and come back lately (their share thins the side
    /// handed on alike).
    survival: Mutex<Survival>,
    metrics: LiveMetrics,
    /// `dnet_exit_threshold`: the threshold in force, with a target.
    threshold_gauge: Gauge<f64, AtomicU64>,
}

/// Shadow samples sampled and come back, both halved now and then.
#[derive(Debug, Default)]
struct Survival {
    sampled: f64,
    returned: f64,
}

impl Survival {
    /// The share of shadow samples that came back (1 before any was sampled).
    fn share(&self) -> f64 {
        if self.sampled <= 0.0 {
            1.0
        } else {
            (self.returned / self.sampled).clamp(0.0, 1.0)
        }
    }
}

impl Agreement {
    #[must_use]
    pub fn new(settings: AgreementSettings, metrics: LiveMetrics, threshold_gauge: Gauge<f64, AtomicU64>) -> Self {
        Self {
            settings,
            exit: OnceLock::new(),
            threshold: AtomicU64::new(0),
            live: Mutex::default(),
            survival: Mutex::default(),
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
        let mut state = self.live.lock().unwrap_or_else(PoisonError::into_inner);
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
        self.threshold.store(live.threshold().to_bits(), Ordering::Relaxed);
        // Set once, under the lock: the first start wins.
        let _ = self.exit.set(exit);
        *state = Some(live);
    }

    /// Starts from this unit's hop record in a reply its computation
    /// computed for a request without thresholds of its own (a transmission
    /// unit learns its exit and threshold so); never from a refusal, whose
    /// record carries no threshold.
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
        let exit = usize::try_from(*self.exit.get()?).ok()?;
        let mut thresholds = if own.len() == SIDE_EXITS {
            own.to_vec()
        } else {
            vec![1.0; SIDE_EXITS]
        };
        *thresholds.get_mut(exit.checked_sub(1)?)? = f64::from_bits(self.threshold.load(Ordering::Relaxed));
        Some(thresholds)
    }

    /// `samples` answered here were sampled as shadow work (whether they
    /// are sent, dropped or fail), for the share that comes back.
    pub fn shadow_sampled(&self, samples: usize) {
        let mut survival = self.survival.lock().unwrap_or_else(PoisonError::into_inner);
        survival.sampled += samples as f64;
        if survival.sampled > SURVIVAL_SPAN {
            survival.sampled /= 2.0;
            survival.returned /= 2.0;
        }
    }

    /// Outcomes of the samples this unit handed on (`here`: its rows of a
    /// request, exit layer 0 where handed on) as the units after this one
    /// answered them (`answer`: every sample's row), each recorded at the
    /// sample rate times the share of shadow samples that came back (both
    /// sides sampled alike). A sample answered late here says nothing of the
    /// last exit: the caller passes no degraded answer.
    pub fn record_handed_on(&self, here: &Answers, answer: &Answers) {
        if here.category.len() != answer.category.len() {
            return;
        }
        let rate = self.settings.sample_rate * self.survival.lock().unwrap_or_else(PoisonError::into_inner).share();
        for i in (0..here.category.len()).filter(|&i| here.exit_layer[i] == 0) {
            let Some(confidence) = here.confidence(i) else { continue };
            if answer.exit_layer[i] <= 0 || fastrand::f64() >= rate {
                continue;
            }
            self.record(f64::from(confidence), here.category[i] == answer.category[i]);
        }
    }

    /// A shadow sample's outcome: answered here with `confidence`, and
    /// whether the last exit agreed.
    pub fn shadow_returned(&self, confidence: f64, agreed: bool) {
        self.survival.lock().unwrap_or_else(PoisonError::into_inner).returned += 1.0;
        self.record(confidence, agreed);
    }

    /// One outcome: a sample of `confidence` here, and whether the last
    /// exit agreed.
    fn record(&self, confidence: f64, agreed: bool) {
        let Some(&exit) = self.exit.get() else { return };
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(live) = live.as_mut() else { return };
        let taken = live.taken();
        let decision = live.record(confidence, agreed);
        let label = ExitLabel { exit };
        let outcomes = i64::try_from(live.outcomes()).unwrap_or(i64::MAX);
        self.metrics.window.get_or_create(&label).set(outcomes);
        self.metrics.outcomes.get_or_create(&label).inc_by(live.taken() - taken);
        if let Some(decision) = decision {
            self.threshold
                .store(decision.reading.threshold.to_bits(), Ordering::Relaxed);
            self.show(exit, &decision);
        }
    }

    /// The gauges, and the log line of a move.
    fn show(&self, exit: u64, decision: &Decision) {
        let reading = decision.reading;
        let label = ExitLabel { exit };
        let live = &self.metrics;
        live.agreement.get_or_create(&label).set(reading.agreement);
        live.bound
            .get_or_create(&BoundLabel { exit, bound: "lower" })
            .set(reading.proved);
        live.bound
            .get_or_create(&BoundLabel { exit, bound: "upper" })
            .set(reading.upper);
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

    /// The threshold in force, once started (for tests and logs).
    #[must_use]
    pub fn threshold(&self) -> Option<f64> {
        self.exit
            .get()
            .map(|_| f64::from_bits(self.threshold.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answer rows of `category` at `exit_layer`, every sample 0.1 confident.
    fn rows(category: Vec<i64>, exit_layer: Vec<i64>) -> Answers {
        Answers {
            probs: category.iter().flat_map(|_| [0.1_f32; 10]).collect(),
            category,
            exit_layer,
        }
    }

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
        // Sample 0 answered here; 1 and 2 handed on, 1 answered alike at 16,
        // 2 differently; 3 handed on and not answered after.
        let here = rows(vec![1, 2, 3, 4], vec![8, 0, 0, 0]);
        let answer = rows(vec![1, 2, 5, 4], vec![8, 16, 16, 0]);
        for _ in 0..10 {
            agreement.record_handed_on(&here, &answer);
        }
        let live = agreement.live.lock().expect("lock");
        let live = live.as_ref().expect("started");
        assert_eq!(live.outcomes(), 20, "two samples of each request");
        let reading = live.reading();
        assert_eq!(
            reading.agreement, 1.0,
            "at the threshold in force (0.5) they were handed on: they end with the last exit's answer"
        );
    }

    #[test]
    fn each_handed_on_outcome_says_whether_the_last_exit_agreed() {
        // Started below their confidence (0.1): read at that threshold, the
        // samples count as answered here, so their agreement shows.
        let agreement = agreement(None);
        agreement.start(8, 0.05, "a test");
        let (here, answer) = (rows(vec![2, 3], vec![0, 0]), rows(vec![2, 5], vec![16, 16]));
        agreement.record_handed_on(&here, &answer);
        let live = agreement.live.lock().expect("lock");
        let reading = live.as_ref().expect("started").reading();
        assert_eq!(reading.agreement_here, Some(0.5), "one agreed, one did not");
    }

    #[test]
    fn the_side_handed_on_is_thinned_as_shadow_samples_are_lost() {
        let agreement = agreement(None);
        agreement.start(8, 0.5, "a test");
        let outcomes = || {
            agreement
                .live
                .lock()
                .expect("lock")
                .as_ref()
                .expect("started")
                .outcomes()
        };
        // Every shadow sample lost: the side handed on is not recorded either.
        agreement.shadow_sampled(100);
        agreement.record_handed_on(&rows(vec![1; 10], vec![0; 10]), &rows(vec![1; 10], vec![16; 10]));
        assert_eq!(outcomes(), 0);
        // All of them back: every sample handed on counts (the rate is 1).
        for _ in 0..100 {
            agreement.shadow_returned(0.9, true);
        }
        agreement.record_handed_on(&rows(vec![1; 10], vec![0; 10]), &rows(vec![1; 10], vec![16; 10]));
        assert_eq!(outcomes(), 110);
    }
}
