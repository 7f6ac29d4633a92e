//! The statistic every benchmark ratio uses: the median of repeats, with
//! their spread, the same on both sides of a comparison.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// Median and range of repeated measurements.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub repeats: usize,
}

impl Summary {
    /// The summary of `values` (at least one).
    ///
    /// # Panics
    /// When `values` is empty.
    #[must_use]
    pub fn of(values: &[f64]) -> Summary {
        assert!(!values.is_empty(), "a summary needs at least one value");
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            repeats: n,
        }
    }
}

/// `median (min-max)` with `precision` decimals.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = f.precision().unwrap_or(1);
        write!(f, "{:.p$} ({:.p$}-{:.p$})", self.median, self.min, self.max)
    }
}

/// Runs `work` (which does `units` of work per call) repeatedly for about
/// `seconds` per repeat, `repeats` times after one warm-up call, and returns
/// the units per second of each repeat.
pub fn rates(repeats: usize, seconds: f64, units: f64, mut work: impl FnMut()) -> Vec<f64> {
    work();
    (0..repeats)
        .map(|_| {
            let started = Instant::now();
            let mut done = 0.0;
            while done == 0.0 || started.elapsed() < Duration::from_secs_f64(seconds) {
                work();
                done += units;
            }
            done / started.elapsed().as_secs_f64()
        })
        .collect()
}

/// One closed-loop run: completed calls per second and latency percentiles.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `concurrency` callers, each calling `call` again as soon as it returns,
/// for `warmup` (not counted) and then `measure`.
///
/// # Panics
/// A caller task panicked (the call itself failed).
pub async fn closed_loop<F, Fut>(concurrency: usize, warmup: Duration, measure: Duration, call: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let from = Instant::now() + warmup;
    let end = from + measure;
    // Collected first: every caller runs from the start, side by side.
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let sent = Instant::now();
                    call().await;
                    if sent >= from {
                        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for caller in callers {
        latencies.extend(caller.await.expect("a caller failed"));
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Run {
        per_second: latencies.len() as f64 / measure.as_secs_f64(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

/// [`closed_loop`] `repeats` times: (calls per second, p50 ms, p99 ms), each summarised.
pub async fn closed_loop_repeats<F, Fut>(
    repeats: usize,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    call: F,
) -> (Summary, Summary, Summary)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut runs = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        runs.push(closed_loop(concurrency, warmup, measure, call.clone()).await);
    }
    let of = |f: fn(&Run) -> f64| Summary::of(&runs.iter().map(f).collect::<Vec<_>>());
    (of(|r| r.per_second), of(|r| r.p50_ms), of(|r| r.p99_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max, s.repeats), (2.5, 1.0, 10.0, 4));
        assert_eq!(format!("{:.1}", Summary::of(&[2.0, 1.0, 3.0])), "2.0 (1.0-3.0)");
    }
}
