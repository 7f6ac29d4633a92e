//! The thresholds a unit decides with: its own, which may change while it
//! runs (a reloaded `--thresholds-file`), or a request's own, within the
//! bounds the unit allows (`--allow-threshold-override`).

use std::sync::{Arc, PoisonError, RwLock};

use crate::model::SIDE_EXITS;
use crate::settings::OverrideBounds;

/// A unit's thresholds of exits 1..15, shared by its clones: a change is
/// seen by the next decision.
#[derive(Clone, Debug)]
pub struct LiveThresholds(Arc<RwLock<[f64; SIDE_EXITS]>>);

impl LiveThresholds {
    #[must_use]
    pub fn new(thresholds: [f64; SIDE_EXITS]) -> Self {
        Self(Arc::new(RwLock::new(thresholds)))
    }

    #[must_use]
    pub fn get(&self) -> [f64; SIDE_EXITS] {
        *self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the thresholds; returns the ones they replace.
    pub fn set(&self, thresholds: [f64; SIDE_EXITS]) -> [f64; SIDE_EXITS] {
        std::mem::replace(&mut *self.0.write().unwrap_or_else(PoisonError::into_inner), thresholds)
    }
}

/// Checks a request's own thresholds against what a unit of exit `exit`
/// allows: only the entry of its exit matters to it (exit 16 has none).
///
/// # Errors
/// The unit takes no overrides, or the entry lies outside its bounds.
pub fn check_override(
    thresholds: &[f64; SIDE_EXITS],
    exit: usize,
    allowed: Option<OverrideBounds>,
) -> Result<(), String> {
    let Some(&threshold) = thresholds.get(exit.wrapping_sub(1)) else {
        return Ok(());
    };
    match allowed {
        None => Err(format!(
            "this unit (exit {exit}) does not take thresholds from requests; start it with \
             --allow-threshold-override LO..HI, or send the request without thresholds"
        )),
        Some(bounds) if !bounds.contains(threshold) => Err(format!(
            "the request's threshold {threshold} for exit {exit} is outside what this unit allows, \
             {bounds} (--allow-threshold-override)"
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_units_own_exit_is_bounded() {
        let mut wanted = [0.0; SIDE_EXITS];
        wanted[7] = 0.7;
        let bounds = Some(OverrideBounds { low: 0.5, high: 1.0 });
        assert_eq!(check_override(&wanted, 8, bounds), Ok(()));
        assert!(check_override(&wanted, 7, bounds)
            .expect_err("refused")
            .contains("outside"));
        assert!(check_override(&wanted, 8, None)
            .expect_err("refused")
            .contains("--allow-threshold-override"));
        assert_eq!(check_override(&wanted, 16, None), Ok(()), "exit 16 has no threshold");
    }

    #[test]
    fn clones_see_a_change() {
        let live = LiveThresholds::new([0.5; SIDE_EXITS]);
        let seen_by_engine = live.clone();
        assert_eq!(live.set([0.7; SIDE_EXITS]), [0.5; SIDE_EXITS]);
        assert_eq!(seen_by_engine.get(), [0.7; SIDE_EXITS]);
    }
}
