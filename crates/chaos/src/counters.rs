//! Counters read from the programs' metrics endpoints, summed over several
//! programs of one scenario.

use std::future::Future;

use anyhow::Context;
use dnet_testkit::Metrics;

/// The sum of the counter `name` (over its labels: shadow work is labelled
/// apart) over the metrics each read returns. A program whose metrics
/// cannot be read fails the scenario rather than counting 0.
///
/// # Errors
/// A read fails, or its metrics lack `name`.
pub async fn total<R>(name: &str, reads: impl IntoIterator<Item = R>) -> anyhow::Result<f64>
where
    R: Future<Output = anyhow::Result<Metrics>>,
{
    let mut total = 0.0;
    for read in reads {
        total += read.await.with_context(|| format!("reading {name}"))?.sum(name)?;
    }
    Ok(total)
}
