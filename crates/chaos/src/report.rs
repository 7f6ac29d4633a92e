//! What each scenario reports, and the Markdown table of all of them.

use std::time::{Duration, Instant};

use dnet_testkit::{ComputationUnit, TransmissionUnit};

use crate::bounds::Bounds;
use crate::counters;
use crate::load::{self, Tally};
use crate::twice::{self, Twice};
use crate::verify::Check;

/// Closed-loop callers of the fault scenarios.
pub const CALLERS: usize = 4;

/// One scenario's outcome.
pub struct Row {
    pub name: String,
    pub tally: Tally,
    /// The exit that answers every request of the scenario.
    pub answer_exit: u8,
    /// Every answer checked against the model (filled in after the runs).
    pub check: Check,
    /// Deliveries the surviving workers received marked as redelivered.
    pub redelivered: u64,
    /// Work done twice, counted where it happened.
    pub twice: Twice,
    /// The scenario's bounds, as the table states them.
    pub bounds: String,
    /// Promises the scenario found broken (besides lost and wrong answers):
    /// its bounds, and what it checks itself.
    pub failures: Vec<String>,
    pub note: String,
}

/// What a scenario ran, for the counts its row reads from them.
pub struct Ran<'a> {
    pub units: Vec<&'a TransmissionUnit>,
    pub workers: Vec<&'a ComputationUnit>,
    /// The logs of workers replaced during the scenario.
    pub replaced_logs: Vec<String>,
}

impl<'a> Ran<'a> {
    /// One unit and its one worker, none replaced.
    pub fn one(unit: &'a TransmissionUnit, worker: &'a ComputationUnit) -> Self {
        Ran {
            units: vec![unit],
            workers: vec![worker],
            replaced_logs: Vec::new(),
        }
    }
}

impl Row {
    /// A scenario's row: its calls' tally and its note, with the
    /// redeliveries and the work done twice that its programs count.
    ///
    /// # Errors
    /// A program's metrics cannot be read.
    pub async fn of(name: &str, tally: Tally, answer_exit: u8, ran: Ran<'_>, note: String) -> anyhow::Result<Row> {
        Ok(Row {
            name: name.to_owned(),
            tally,
            answer_exit,
            check: Check::default(),
            redelivered: counters::total("dnet_worker_redelivered_total", ran.workers.iter().map(|w| w.metrics()))
                .await? as u64,
            twice: twice::count(&ran.units, &ran.workers, &ran.replaced_logs).await?,
            bounds: String::new(),
            failures: Vec::new(),
            note,
        })
    }

    /// This row held to `bounds` (`recovery`: seconds from the fault's end
    /// to the first answer after it).
    #[must_use]
    pub fn bounded(mut self, bounds: &Bounds, recovery: Option<f64>) -> Row {
        self.bounds = bounds.describe();
        self.failures.extend(bounds.broken(&self.tally, recovery));
        self
    }

    /// Holds the row's errors to its fault: none ended before the fault
    /// began (`from`) or more than `settle` after it ended (`to`).
    pub fn errors_only_during(&mut self, from: Instant, to: Instant, settle: Duration) {
        let outside = self.tally.errors_outside(from, to + settle);
        self.bounds.push_str(&format!(
            ", errors only during the fault and {:.0} s after",
            settle.as_secs_f64()
        ));
        self.require(outside == 0, || {
            format!("{outside} errors outside the fault (before it, or more than {settle:?} after it ended)")
        });
    }

    /// Adds `broken` to the failures unless `held`.
    pub fn require(&mut self, held: bool, broken: impl FnOnce() -> String) {
        if !held {
            self.failures.push(broken());
        }
    }
}

/// The Markdown table of all rows.
#[must_use]
pub fn table(rows: &[Row], duration: Duration) -> String {
    let mut out = "| scenario | sent | answered | wrong answers | computed again | late replies | errors by kind | error rate | lost | redelivered | bounds | held | notes |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
"
    .to_owned();
    for row in rows {
        let t = &row.tally;
        let errors: Vec<String> = t.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let errors = if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(", ")
        };
        let error_rate = 100.0 * t.error_count() as f64 / t.sent.max(1) as f64;
        let held = if row.failures.is_empty() {
            "yes".to_owned()
        } else {
            format!("**no**: {}", row.failures.join("; "))
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {error_rate:.1}% | {} | {} | {} | {held} | {} |\n",
            row.name,
            t.sent,
            t.answered,
            row.check.wrong,
            row.twice.computed_again,
            row.twice.late_replies,
            errors,
            t.lost,
            row.redelivered,
            row.bounds,
            row.note
        ));
    }
    out.push_str(&format!(
        "\n{CALLERS} closed-loop callers per fault scenario for {} s (the overload scenarios run open loop, \
         as their notes say), each request with an input of its own. \
         lost = sent - answered - clean errors (a call that hangs past its deadline + {} s, or ends without a \
         result or an error message). Every answer is checked against the model computed by the suite: \
         wrong answers = answers that are not their request's. Work done twice, counted where it happens: \
         computed again = answers the workers computed for a request (its correlation id, from their logs) that \
         a worker had answered before; late replies = replies the transmission units dropped because no call \
         waited for them. redelivered = deliveries the workers received marked redelivered. bounds = what the \
         scenario must reach besides 0 lost and 0 wrong (its answered share, the error kinds its fault may cause, \
         the first answer after the fault ends, and the checks its notes name); a run that breaks one fails.\n",
        duration.as_secs(),
        load::GRACE.as_secs()
    ));
    out
}
