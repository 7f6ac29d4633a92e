//! Choosing exit thresholds from data (`test-unit calibrate`; the method is
//! in docs/calibrate-and-plan.md).
//!
//! A cascade answers an input at the first of its exits whose confidence
//! reaches that exit's threshold, else at exit 16. Given every exit's answer
//! and confidence for every input ([`ExitTable`]), [`choose`] lowers the
//! thresholds, earliest exit first, as far as the cascade's answers still
//! match the reference (exit 16's answers, or the labels) for the target
//! share of inputs, and repeats until no threshold can go lower. The result
//! is a point where lowering any one threshold enough to exit one more input
//! there would miss the target.

use dnet_calibration::choice::{lowest_threshold, meets, Candidate};
use dnet_model::model::SIDE_EXITS;

use crate::exit_table::{ExitTable, EXITS};

/// What the cascade's answers are compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// Exit 16's answer for the same input (no labels needed).
    FinalExit,
    /// The input's label.
    Labels,
}

/// What thresholds are chosen for: at least `share` of the inputs answered
/// as `reference` answers them.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub reference: Reference,
    pub share: f64,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reference {
            Reference::FinalExit => write!(f, "agreement with exit 16 >= {}", self.share),
            Reference::Labels => write!(f, "accuracy >= {}", self.share),
        }
    }
}

/// The thresholds being chosen or evaluated, and the exits that have them.
#[derive(Clone, Debug, PartialEq)]
pub struct Cascade {
    /// Thresholds of exits 1..=15 (1.0 at exits the cascade does not have).
    pub thresholds: [f64; SIDE_EXITS],
    /// The side exits the cascade evaluates, rising (exit 16 always answers).
    pub exits: Vec<usize>,
}

impl Cascade {
    /// Where input `i` exits: the first exit of the cascade at which it is
    /// confident, else 16.
    #[must_use]
    pub fn exit_of(&self, table: &ExitTable, i: usize) -> usize {
        self.exit_after(table, i, 0)
    }

    /// Where input `i` exits among the cascade's exits after `after`.
    fn exit_after(&self, table: &ExitTable, i: usize, after: usize) -> usize {
        self.exits
            .iter()
            .copied()
            .filter(|&e| e > after)
            .find(|&e| f64::from(table.confidence[i][e - 1]) >= self.thresholds[e - 1])
            .unwrap_or(EXITS)
    }
}

/// Whether input `i`'s answer at exit `e` matches the reference.
#[must_use]
pub fn matches(table: &ExitTable, reference: Reference, i: usize, e: usize) -> bool {
    let truth = match (reference, &table.label) {
        (Reference::Labels, Some(labels)) => labels[i],
        _ => table.answer[i][EXITS - 1],
    };
    table.answer[i][e - 1] == truth
}

/// Inputs the cascade answers as the reference does.
#[must_use]
pub fn matching(table: &ExitTable, reference: Reference, cascade: &Cascade) -> usize {
    (0..table.len())
        .filter(|&i| matches(table, reference, i, cascade.exit_of(table, i)))
        .count()
}

/// Chooses thresholds for `exits` (the cascade's side exits) so that at
/// least `target` of the inputs are answered as `reference` answers them,
/// exiting as early as that allows.
///
/// # Errors
/// Exit 16 alone misses the target (the starting point: with labels, the
/// network is less accurate than asked on this data), or there is no data.
pub fn choose(table: &ExitTable, target: Target, exits: &[usize]) -> Result<Cascade, String> {
    let Target {
        reference,
        share: target,
    } = target;
    if reference == Reference::Labels && table.label.is_none() {
        return Err("a target accuracy needs labelled inputs".into());
    }
    let n = table.len();
    if n == 0 {
        return Err("no inputs to calibrate on".into());
    }
    let mut cascade = Cascade {
        thresholds: [1.0; SIDE_EXITS],
        exits: exits.to_vec(),
    };
    let start = matching(table, reference, &cascade);
    if !meets(i64::try_from(start).unwrap_or(i64::MAX), n, target) {
        return Err(format!(
            "exit 16 alone answers {:.4} of these {n} inputs as the reference, under the target {target}: \
             calibrate starts from exit 16 alone and lowers thresholds only while the target holds; \
             lower the target",
            start as f64 / n as f64
        ));
    }
    while exits.iter().any(|&e| lower(table, reference, target, &mut cascade, e)) {}
    Ok(cascade)
}

/// Lowers exit `e`'s threshold as far as the target allows, the others
/// fixed; whether it moved. The step itself (`dnet_calibration::choice`)
/// is the one a unit's live calibration takes over its window.
fn lower(table: &ExitTable, reference: Reference, target: f64, cascade: &mut Cascade, e: usize) -> bool {
    // Inputs that reach `e` and go past it: below its threshold.
    let mut waiting: Vec<Candidate> = (0..table.len())
        .filter(|&i| cascade.exit_of(table, i) > e)
        .map(|i| {
            let now = cascade.exit_after(table, i, e);
            Candidate {
                confidence: table.confidence[i][e - 1],
                gain: i64::from(matches(table, reference, i, e)) - i64::from(matches(table, reference, i, now)),
            }
        })
        .collect();
    let matched = i64::try_from(matching(table, reference, cascade)).unwrap_or(i64::MAX);
    let inputs = table.len();
    match lowest_threshold(&mut waiting, matched, |m| meets(m, inputs, target)) {
        Some(threshold) => {
            cascade.thresholds[e - 1] = threshold;
            true
        }
        None => false,
    }
}

/// How a cascade does on the data, in total and at each exit.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Evaluation {
    pub inputs: usize,
    /// Share of inputs answered as exit 16 answers them.
    pub agreement: f64,
    /// Share answered with their label (labelled data only).
    pub accuracy: Option<f64>,
    /// Mean exit layer.
    pub mean_exit: f64,
    /// The cascade's exits, 16 last.
    pub per_exit: Vec<ExitRow>,
}

/// One exit of an [`Evaluation`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ExitRow {
    pub exit: usize,
    /// `None` at exit 16.
    pub threshold: Option<f64>,
    /// Share of all inputs answered here.
    pub share: f64,
    /// Of those, the share answered as exit 16 answers them (`None`: none answered here).
    pub agreement: Option<f64>,
    /// Of those, the share answered with their label.
    pub accuracy: Option<f64>,
}

/// Evaluates `cascade` on `table`.
#[must_use]
pub fn evaluate(table: &ExitTable, cascade: &Cascade) -> Evaluation {
    let n = table.len();
    let exits: Vec<usize> = (0..n).map(|i| cascade.exit_of(table, i)).collect();
    let share = |count: usize, of: usize| (of > 0).then(|| count as f64 / of as f64);
    let labelled = table.label.is_some();
    let rate = |inputs: &[usize], reference| {
        let matched = inputs
            .iter()
            .filter(|&&i| matches(table, reference, i, exits[i]))
            .count();
        share(matched, inputs.len())
    };
    let all: Vec<usize> = (0..n).collect();
    let per_exit = cascade
        .exits
        .iter()
        .copied()
        .chain([EXITS])
        .map(|e| {
            let here: Vec<usize> = all.iter().copied().filter(|&i| exits[i] == e).collect();
            ExitRow {
                exit: e,
                threshold: (e < EXITS).then(|| cascade.thresholds[e - 1]),
                share: share(here.len(), n).unwrap_or(0.0),
                agreement: rate(&here, Reference::FinalExit),
                accuracy: if labelled { rate(&here, Reference::Labels) } else { None },
            }
        })
        .collect();
    Evaluation {
        inputs: n,
        agreement: rate(&all, Reference::FinalExit).unwrap_or(0.0),
        accuracy: if labelled { rate(&all, Reference::Labels) } else { None },
        mean_exit: exits.iter().sum::<usize>() as f64 / n.max(1) as f64,
        per_exit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs with given (confidence, answer) at exit 1, answer `final_answer` at 16.
    fn table(rows: &[(f32, u8)], final_answer: u8) -> ExitTable {
        let mut t = ExitTable::default();
        for &(confidence, answer) in rows {
            let mut c = [0.5; EXITS];
            let mut a = [final_answer; EXITS];
            c[0] = confidence;
            a[0] = answer;
            t.confidence.push(c);
            t.answer.push(a);
        }
        t
    }

    fn agreement(share: f64) -> Target {
        Target {
            reference: Reference::FinalExit,
            share,
        }
    }

    #[test]
    fn lowers_an_exit_until_one_more_input_would_miss_the_target() {
        // Falling confidence: right, right, wrong, right, wrong.
        let t = table(&[(0.9, 1), (0.8, 1), (0.7, 2), (0.6, 1), (0.5, 3)], 1);
        let cascade = choose(&t, agreement(0.8), &[1]).expect("reachable");
        // 4 of 5 must match: the first four may exit at 1 (3 match + the fifth at 16).
        let halfway = |a: f32, b: f32| (f64::from(a) + f64::from(b)) / 2.0;
        assert_eq!(cascade.thresholds[0], halfway(0.6, 0.5));
        assert_eq!(matching(&t, Reference::FinalExit, &cascade), 4);
        // All must match: the wrong input at 0.7 stops it above 0.7.
        let strict = choose(&t, agreement(1.0), &[1]).expect("reachable");
        assert_eq!(strict.thresholds[0], halfway(0.8, 0.7));
    }

    #[test]
    fn every_input_exiting_sets_zero_and_an_unreachable_target_is_an_error() {
        let t = table(&[(0.9, 1), (0.8, 1)], 1);
        assert_eq!(choose(&t, agreement(1.0), &[1]).expect("ok").thresholds[0], 0.0);
        let mut labelled = table(&[(0.9, 1), (0.8, 1)], 1);
        labelled.label = Some(vec![2, 2]);
        let error = choose(
            &labelled,
            Target {
                reference: Reference::Labels,
                share: 0.5,
            },
            &[1],
        )
        .expect_err("exit 16 alone misses it");
        assert!(error.contains("lower the target"), "{error}");
    }
}
