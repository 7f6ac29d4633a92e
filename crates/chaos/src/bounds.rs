//! What each scenario must reach for the run to pass, besides losing and
//! mixing up nothing: the share of its calls answered, the kinds of error
//! its fault may cause, and how soon answers come back once the fault
//! ends. A run that breaks one fails (exit status 1), so that a scenario
//! in which every call fails cannot pass.

use std::time::Duration;

use crate::load::Tally;

/// One scenario's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// The least share of the calls sent that must be answered.
    pub min_answered: f64,
    /// The error kinds (tonic codes) the fault may cause; any other breaks the bounds.
    pub errors_allowed: &'static [&'static str],
    /// The longest time from the fault's end to the first answer.
    pub max_recovery: Option<Duration>,
}

impl Bounds {
    /// What the bounds say, for the table.
    #[must_use]
    pub fn describe(&self) -> String {
        let share = format!("{:.1}", 100.0 * self.min_answered);
        let mut parts = vec![format!("answered >= {}%", share.trim_end_matches(".0"))];
        parts.push(if self.errors_allowed.is_empty() {
            "no errors".to_owned()
        } else {
            format!("errors only {}", self.errors_allowed.join("/"))
        });
        if let Some(recovery) = self.max_recovery {
            parts.push(format!("first answer <= {:.0} s after", recovery.as_secs_f64()));
        }
        parts.join(", ")
    }

    /// Each bound `tally` breaks (`recovery`: seconds from the fault's end
    /// to the first answer after it, `None` when none came).
    #[must_use]
    pub fn broken(&self, tally: &Tally, recovery: Option<f64>) -> Vec<String> {
        let mut broken = Vec::new();
        let answered = tally.answered as f64 / tally.sent.max(1) as f64;
        if tally.sent == 0 || answered < self.min_answered {
            broken.push(format!(
                "answered {:.1}% of {} sent, bound {:.0}%",
                100.0 * answered,
                tally.sent,
                100.0 * self.min_answered
            ));
        }
        for (kind, count) in &tally.errors {
            if !self.errors_allowed.contains(&kind.as_str()) {
                broken.push(format!("{count} {kind} errors, which this fault should not cause"));
            }
        }
        if let Some(limit) = self.max_recovery {
            match recovery {
                Some(seconds) if seconds <= limit.as_secs_f64() => {}
                Some(seconds) => broken.push(format!(
                    "first answer {seconds:.2} s after the fault ended, bound {:.0} s",
                    limit.as_secs_f64()
                )),
                None => broken.push("no answer after the fault ended".to_owned()),
            }
        }
        broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        min_answered: 0.9,
        errors_allowed: &["Unavailable"],
        max_recovery: Some(Duration::from_secs(2)),
    };

    fn tally(sent: u64, answered: u64, errors: &[(&str, u64)]) -> Tally {
        Tally {
            sent,
            answered,
            errors: errors.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
            ..Tally::default()
        }
    }

    #[test]
    fn a_scenario_where_every_call_fails_breaks_its_bounds() {
        let all_failed = tally(1000, 0, &[("Unavailable", 1000)]);
        let broken = BOUNDS.broken(&all_failed, None);
        assert_eq!(broken.len(), 2, "{broken:?}");
        assert!(broken[0].starts_with("answered 0.0% of 1000 sent"), "{broken:?}");
        assert_eq!(broken[1], "no answer after the fault ended");
    }

    #[test]
    fn errors_of_another_kind_a_slow_recovery_and_nothing_sent_break_it() {
        let other = tally(1000, 995, &[("Unavailable", 2), ("Internal", 3)]);
        assert_eq!(
            BOUNDS.broken(&other, Some(2.5)),
            [
                "3 Internal errors, which this fault should not cause",
                "first answer 2.50 s after the fault ended, bound 2 s"
            ]
        );
        assert_eq!(BOUNDS.broken(&tally(0, 0, &[]), Some(0.0)).len(), 1, "nothing sent");
    }

    #[test]
    fn a_scenario_within_its_bounds_passes() {
        let good = tally(1000, 950, &[("Unavailable", 50)]);
        assert!(BOUNDS.broken(&good, Some(0.4)).is_empty());
        assert_eq!(
            BOUNDS.describe(),
            "answered >= 90%, errors only Unavailable, first answer <= 2 s after"
        );
    }
}
