//! A unit's live calibration (docs/calibrate-and-plan.md, "Thresholds that
//! hold a target").
//!
//! **What it sees.** For a sampled share of the samples the unit computes,
//! on both sides of its threshold: the sample's confidence at this exit and
//! whether the last exit gave it the same category (answered here: shadow
//! work asks the last exit; handed on: the answer that came back says). The
//! share is the same on both sides, so the last `window` outcomes are a
//! sample of the traffic whatever the threshold: a move of the threshold
//! does not change what the window measures.
//!
//! **The target** `A` has calibrate's meaning for the two exits this unit
//! and the last: of the samples the unit computes, at least `A` end with
//! the last exit's answer (those answered here agree with it; those handed
//! on get it). `test-unit calibrate --exits E,16 --target-agreement A`
//! chooses for the same quantity on a data set.
//!
//! **The choice.** Every [`LiveCalibration::every`] new outcomes it takes
//! calibrate's step over the window (`choice`), with one difference: the
//! window must *prove* the target (the agreement's lower one-sided 95%
//! Wilson bound at least `A`), not merely show it. That threshold, rounded
//! up to the grid `1 - 2^(-k/2)` and kept in the range, is the one it wants:
//! - **lower** to it when it is below the threshold in force: the window
//!   proves the target there;
//! - **raise** to it when the window proves that the threshold in force
//!   misses the target (the agreement's upper bound under `A`);
//! - otherwise **hold**.
//!
//! Between "proved to hold" and "proved to miss" the threshold holds: a dead
//! band as wide as the window's uncertainty, which its noise does not cross,
//! so it does not flap; and a grid step halves the gap to 1 every two
//! steps, so the moves it makes are worth making.

use std::collections::VecDeque;

use crate::bound::{least_window, wilson};
use crate::choice::{lowest_threshold, Candidate};

/// Disagreements a default window expects at the target: the margin that
/// proving costs is then about a sixth of what the target allows
/// (`1.645 / sqrt(100)`), and the window's noise stays inside the dead band
/// (simulated: no threshold left its grid step over 5,000 outcomes in 1,900
/// runs; with 50, 1 run in 160 did).
pub const EXPECTED_DISAGREEMENTS: f64 = 100.0;
/// The smallest and largest default windows.
pub const MIN_WINDOW: usize = 200;
pub const MAX_WINDOW: usize = 100_000;
/// Grid steps per halving of the gap to 1.
const STEPS_PER_HALVING: f64 = 2.0;

/// What the live calibration aims for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LiveSettings {
    /// The agreement to hold; `None`: measure only, never move.
    pub target: Option<f64>,
    /// Where the threshold may go.
    pub low: f64,
    pub high: f64,
    /// Outcomes the window holds.
    pub window: usize,
}

/// The default window for `target`: [`EXPECTED_DISAGREEMENTS`] at the
/// target, within [`MIN_WINDOW`]..[`MAX_WINDOW`] (2,000 outcomes without one):
/// 1,000 outcomes for 0.9, 10,000 for 0.99.
#[must_use]
pub fn default_window(target: Option<f64>) -> usize {
    let Some(target) = target.filter(|&t| t < 1.0) else {
        return 2_000;
    };
    // Rounded to a whole number of outcomes first: 100 / (1 - 0.9) is a hair over 1,000.
    let wanted = (EXPECTED_DISAGREEMENTS / (1.0 - target) * 1e6).round() / 1e6;
    let wanted = wanted.ceil();
    (wanted.min(MAX_WINDOW as f64) as usize).max(MIN_WINDOW)
}

/// Whether a window of `window` outcomes can ever prove `target`.
///
/// # Errors
/// It cannot, with the reason and the window it would need.
pub fn check(target: f64, window: usize) -> Result<(), String> {
    let Some(least) = least_window(target) else {
        return Err(format!(
            "--target-agreement {target} can never be proved: a window of n outcomes that all agree proves \
             at most n / (n + 2.71) (the one-sided 95% Wilson bound), which stays under 1"
        ));
    };
    if window < least {
        let (most, _) = wilson(window as f64, window as f64);
        let comfortable = (EXPECTED_DISAGREEMENTS / (1.0 - target)).ceil().max(least as f64);
        return Err(format!(
            "--target-agreement {target} cannot be proved by a window of {window} outcomes: even {window} that \
             all agree prove at most {most:.4} (the one-sided 95% Wilson bound); it needs at least {least} \
             (--agreement-window, at most {MAX_WINDOW}), and about {comfortable:.0} to answer early at that \
             target for a small price"
        ));
    }
    Ok(())
}

/// Which way a decision moved the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// The window proved that the threshold in force missed the target.
    Raised,
    /// The window proved the target at a lower threshold.
    Lowered,
}

/// What the window shows at the threshold in force.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    pub threshold: f64,
    /// Outcomes in the window.
    pub outcomes: usize,
    /// Share of them that end with the last exit's answer at this threshold
    /// (the target's quantity).
    pub agreement: f64,
    /// Its lower one-sided 95% bound: the target is proved while this is at
    /// least the target.
    pub proved: f64,
    /// Its upper one-sided 95% bound: the target is proved missed (and the
    /// threshold raised) when this falls under the target.
    pub upper: f64,
    /// Share of them answered here at this threshold.
    pub early_share: f64,
    /// Of those answered here, the share the last exit agreed with.
    pub agreement_here: Option<f64>,
}

/// A decision: the move it made, if any, and the reading it made it on
/// (after the move).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub moved: Option<(Move, f64)>,
    pub reading: Reading,
}

/// The window of outcomes and the threshold they choose.
#[derive(Debug)]
pub struct LiveCalibration {
    settings: LiveSettings,
    /// (confidence here, agreed with the last exit), newest last.
    outcomes: VecDeque<(f32, bool)>,
    /// Outcomes since the last decision.
    fresh: usize,
    /// Outcomes taken in all (the window holds the last of them).
    taken: u64,
    threshold: f64,
}

impl LiveCalibration {
    /// A calibration starting at `threshold` (kept in the range).
    ///
    /// # Errors
    /// The window can never prove the target (see [`check`]).
    pub fn new(settings: LiveSettings, threshold: f64) -> Result<Self, String> {
        if let Some(target) = settings.target {
            check(target, settings.window)?;
        }
        Ok(Self {
            settings,
            outcomes: VecDeque::with_capacity(settings.window.min(MAX_WINDOW)),
            fresh: 0,
            taken: 0,
            threshold: threshold.clamp(settings.low, settings.high),
        })
    }

    /// The threshold in force.
    #[must_use]
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Outcomes in the window.
    #[must_use]
    pub fn outcomes(&self) -> usize {
        self.outcomes.len()
    }

    /// Outcomes taken since the start (after a change of the traffic, the
    /// window describes the new traffic alone once a window more has come).
    #[must_use]
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// New outcomes between two decisions: a fiftieth of the window, at least 20.
    #[must_use]
    pub fn every(&self) -> usize {
        (self.settings.window / 50).max(20)
    }

    /// One outcome: a sample of `confidence` here, and whether the last
    /// exit agreed. Every [`LiveCalibration::every`] outcomes, a decision.
    /// A confidence that is not a number in 0..=1 says nothing: ignored.
    pub fn record(&mut self, confidence: f64, agreed: bool) -> Option<Decision> {
        if !(0.0..=1.0).contains(&confidence) {
            return None;
        }
        self.outcomes.push_back((confidence as f32, agreed));
        self.taken += 1;
        if self.outcomes.len() > self.settings.window {
            self.outcomes.pop_front();
        }
        self.fresh += 1;
        if self.fresh < self.every() {
            return None;
        }
        self.fresh = 0;
        Some(self.decide())
    }

    /// Moves the threshold on what the window proves.
    fn decide(&mut self) -> Decision {
        let moved = self.settings.target.and_then(|target| self.step(target));
        Decision {
            moved,
            reading: self.reading(),
        }
    }

    /// The move the window calls for, made; `None` when it holds (or
    /// cannot prove anything yet).
    fn step(&mut self, target: f64) -> Option<(Move, f64)> {
        let n = self.outcomes.len();
        if n < least_window(target)? {
            return None;
        }
        let wanted = self.wanted(target);
        let (agreeing, _) = self.agreeing_at(self.threshold);
        let missed = wilson(agreeing as f64, n as f64).1 < target;
        let from = self.threshold;
        let way = if wanted < from {
            Move::Lowered
        } else if wanted > from && missed {
            Move::Raised
        } else {
            return None;
        };
        self.threshold = wanted;
        Some((way, from))
    }

    /// The lowest threshold the window proves the target at (calibrate's
    /// step, the bound for the share), up to the grid, in the range.
    fn wanted(&self, target: f64) -> f64 {
        let n = self.outcomes.len();
        let mut candidates: Vec<Candidate> = self
            .outcomes
            .iter()
            .map(|&(confidence, agreed)| Candidate {
                confidence,
                gain: if agreed { 0 } else { -1 },
            })
            .collect();
        // Handed on, every sample gets the last exit's answer: all match.
        let all = i64::try_from(n).unwrap_or(i64::MAX);
        let proved = |matched: i64| wilson(matched as f64, n as f64).0 >= target;
        lowest_threshold(&mut candidates, all, proved)
            .map_or(self.settings.high, grid_up)
            .clamp(self.settings.low, self.settings.high)
    }

    /// Outcomes that end with the last exit's answer at `threshold`, and
    /// those answered here.
    fn agreeing_at(&self, threshold: f64) -> (usize, usize) {
        let here = self.outcomes.iter().filter(|&&(c, _)| f64::from(c) >= threshold);
        let (answered, disagreed) = here.fold((0, 0), |(a, d), &(_, agreed)| (a + 1, d + usize::from(!agreed)));
        (self.outcomes.len() - disagreed, answered)
    }

    /// What the window shows at the threshold in force.
    #[must_use]
    pub fn reading(&self) -> Reading {
        let n = self.outcomes.len();
        let (agreeing, answered) = self.agreeing_at(self.threshold);
        let share = |count: usize, of: usize| if of == 0 { 0.0 } else { count as f64 / of as f64 };
        let disagreed_here = n - agreeing;
        let (proved, upper) = wilson(agreeing as f64, n as f64);
        Reading {
            threshold: self.threshold,
            outcomes: n,
            agreement: if n == 0 { 1.0 } else { share(agreeing, n) },
            proved,
            upper,
            early_share: share(answered, n),
            agreement_here: (answered > 0).then(|| share(answered - disagreed_here, answered)),
        }
    }
}

/// Grid point `k`: `1 - 2^(-k/2)`.
#[must_use]
pub fn grid(k: u32) -> f64 {
    1.0 - (-f64::from(k) / STEPS_PER_HALVING).exp2()
}

/// The grid index of `threshold` rounded up: the first grid point at or
/// above it (a grid step is the unit the controller moves in).
#[must_use]
pub fn grid_index(threshold: f64) -> u32 {
    if threshold <= 0.0 {
        return 0;
    }
    let gap = (1.0 - threshold).max(f64::MIN_POSITIVE);
    let mut k = (-STEPS_PER_HALVING * gap.log2()).ceil().max(0.0) as u32;
    // Floating point can land a hair either side of a grid point.
    while k > 0 && grid(k - 1) >= threshold {
        k -= 1;
    }
    while grid(k) < threshold && k < 2_000 {
        k += 1;
    }
    k
}

/// The first grid point at or above `threshold`.
fn grid_up(threshold: f64) -> f64 {
    grid(grid_index(threshold))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_window_is_sized_from_the_target() {
        assert_eq!(default_window(Some(0.9)), 1_000);
        assert_eq!(default_window(Some(0.99)), 10_000);
        assert_eq!(default_window(Some(0.5)), MIN_WINDOW);
        assert_eq!(default_window(Some(0.9999)), MAX_WINDOW);
        assert_eq!(default_window(None), 2_000);
    }

    #[test]
    fn the_grid_rounds_up_and_halves_the_gap_every_two_steps() {
        assert_eq!(grid(0), 0.0);
        assert_eq!(grid(2), 0.5);
        assert_eq!(grid(4), 0.75);
        assert_eq!(grid_index(0.75), 4);
        assert_eq!(grid_index(0.76), 5);
        assert_eq!(grid_up(0.76), grid(5));
        assert_eq!(grid_index(0.0), 0);
    }
}
