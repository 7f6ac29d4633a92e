//! Work done twice, counted where it happens: requests that workers
//! computed and answered more than once (their correlation ids, from the
//! workers' logs: a redelivery after a worker died, a copy given back), and
//! replies a transmission unit dropped because no call waited for them (a
//! late answer, or a second one). Each caller keeps one answer whatever
//! happens, so answers alone can never show this.

use std::collections::HashMap;

use dnet_testkit::{ComputationUnit, TransmissionUnit};

use crate::counters;

/// The workers' log filter: their own lines at info, and the line each
/// answered request leaves (with its correlation id) at debug.
pub const WORKER_LOG_FILTER: (&str, &str) = ("RUST_LOG", "info,lapin=warn,h2=warn,computation_unit::delivery=debug");

/// What was done twice in one scenario.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Twice {
    /// Answers computed for a correlation id some worker had answered already.
    pub computed_again: u64,
    /// Replies the transmission units dropped: no call waited for them.
    pub late_replies: u64,
}

/// Counts the work done twice by `workers` (and in `more_logs`, the logs
/// of workers already replaced) for the calls of `units`.
///
/// # Errors
/// A unit's metrics cannot be read.
pub async fn count(
    units: &[&TransmissionUnit],
    workers: &[&ComputationUnit],
    more_logs: &[String],
) -> anyhow::Result<Twice> {
    let mut answered: HashMap<String, u64> = HashMap::new();
    let logs = workers.iter().map(|w| w.process.log()).chain(more_logs.iter().cloned());
    for log in logs {
        for line in log.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if event["message"] == "answered" {
                if let Some(id) = event["correlation_id"].as_str() {
                    *answered.entry(id.to_owned()).or_default() += 1;
                }
            }
        }
    }
    let late_replies = counters::total("dnet_late_replies_total", units.iter().map(|u| u.metrics())).await?;
    Ok(Twice {
        computed_again: answered.values().map(|n| n.saturating_sub(1)).sum(),
        late_replies: late_replies as u64,
    })
}
