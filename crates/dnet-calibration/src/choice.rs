//! One exit's threshold, lowered as far as a target allows: the step that
//! `test-unit calibrate` repeats over a cascade's exits and that a unit's
//! live calibration takes over its window of outcomes.
//!
//! Lowering the threshold past an input's confidence makes it answer at
//! this exit instead of where it is answered now; the count of answers that
//! match the reference changes by its match here minus its match there (its
//! *gain*). Taken in order of falling confidence, the lowest confidence at
//! which the running count still meets the target is where the threshold
//! goes: halfway between that input's confidence and the next lower one, so
//! that the rounding of another batch size cannot move an input across it
//! (0 when every input exits here).

/// An input that reaches an exit and goes past it at the thresholds in force.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Its confidence at this exit.
    pub confidence: f32,
    /// Matching answers gained if it were answered here: its match here
    /// minus its match where it is answered now (-1, 0 or 1).
    pub gain: i64,
}

/// The lowest threshold of the exit at which `meets` holds for the count of
/// matching answers, starting from `matched` with none of `candidates`
/// answered here; `None` when even the most confident one cannot exit here.
/// `candidates` are sorted by falling confidence in place.
pub fn lowest_threshold(candidates: &mut [Candidate], matched: i64, meets: impl Fn(i64) -> bool) -> Option<f64> {
    candidates.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let mut matched = matched;
    let mut lowest = None;
    let mut k = 0;
    while k < candidates.len() {
        let confidence = candidates[k].confidence;
        // Inputs of equal confidence cross the threshold together (total
        // order: a NaN is equal to itself and the loop always advances).
        while k < candidates.len() && candidates[k].confidence.total_cmp(&confidence).is_eq() {
            matched += candidates[k].gain;
            k += 1;
        }
        if meets(matched) {
            lowest = Some(k);
        }
    }
    let end = lowest?;
    let exiting = f64::from(candidates[end - 1].confidence);
    Some(
        candidates
            .get(end)
            .map_or(0.0, |next| (exiting + f64::from(next.confidence)) / 2.0),
    )
}

/// Whether `matched` of `inputs` reaches `target` (a share).
#[must_use]
pub fn meets(matched: i64, inputs: usize, target: f64) -> bool {
    matched as f64 >= target * inputs as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn halfway(a: f32, b: f32) -> Option<f64> {
        Some((f64::from(a) + f64::from(b)) / 2.0)
    }

    fn candidates(rows: &[(f32, i64)]) -> Vec<Candidate> {
        rows.iter()
            .map(|&(confidence, gain)| Candidate { confidence, gain })
            .collect()
    }

    #[test]
    fn stops_above_the_input_that_would_miss_the_target() {
        // Five inputs now answered as the reference (matched 5); exiting
        // here, the third most confident would not be.
        let mut rows = candidates(&[(0.6, 0), (0.9, 0), (0.7, -1), (0.8, 0), (0.5, -1)]);
        let all = lowest_threshold(&mut rows, 5, |m| meets(m, 5, 1.0));
        assert_eq!(all, halfway(0.8, 0.7), "nothing may be lost: above 0.7");
        let four_of_five = lowest_threshold(&mut rows, 5, |m| meets(m, 5, 0.8));
        assert_eq!(four_of_five, halfway(0.6, 0.5), "one may be lost: down to 0.6");
        let any = lowest_threshold(&mut rows, 5, |m| meets(m, 5, 0.5));
        assert_eq!(any, Some(0.0), "every input exits here");
    }

    #[test]
    fn a_gain_later_can_make_up_for_a_loss_and_ties_move_together() {
        // With labels an input can match better here than where it goes now.
        let mut rows = candidates(&[(0.9, -1), (0.8, 1), (0.8, -1), (0.7, 1)]);
        assert_eq!(lowest_threshold(&mut rows, 4, |m| m >= 4), Some(0.0));
        let mut tied = candidates(&[(0.9, 0), (0.8, 0), (0.8, -1)]);
        assert_eq!(
            lowest_threshold(&mut tied, 3, |m| m >= 3),
            halfway(0.9, 0.8),
            "the two at 0.8 cross together"
        );
        assert_eq!(lowest_threshold(&mut candidates(&[(0.9, -1)]), 1, |m| m >= 1), None);
        let mut odd = candidates(&[(f32::NAN, 0), (0.5, 0)]);
        assert!(
            lowest_threshold(&mut odd, 2, |m| m >= 2).is_some(),
            "a NaN ends, whatever it chooses"
        );
    }
}
