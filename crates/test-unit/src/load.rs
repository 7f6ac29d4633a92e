//! The load: closed loop (`-c` callers) or open loop (`--rate`, Poisson arrivals).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::call::{self, Context, Record};
use crate::inputs::splitmix64;

/// When to stop sending.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    Count(u64),
    Elapsed(Duration),
}

impl Until {
    fn more(self, index: u64, started: Instant) -> bool {
        match self {
            Until::Count(n) => index < n,
            Until::Elapsed(d) => started.elapsed() < d,
        }
    }
}

/// A progress bar on a terminal, nothing otherwise.
fn progress(until: Until) -> ProgressBar {
    let bar = match until {
        Until::Count(n) => ProgressBar::new(n),
        Until::Elapsed(_) => ProgressBar::no_length(),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} {elapsed}") {
        bar.set_style(style);
    }
    bar
}

/// `concurrency` callers, each sending its next request once answered.
pub async fn closed_loop(context: Arc<Context>, concurrency: u64, until: Until) -> Vec<Record> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let bar = progress(until);
    let callers = (0..concurrency).map(|_| {
        let (context, next, bar) = (Arc::clone(&context), Arc::clone(&next), bar.clone());
        tokio::spawn(async move {
            let mut records = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                if !until.more(index, started) {
                    return records;
                }
                let sample = context.inputs.request(index, context.samples_per_request);
                records.push(call::run(index, sample, &context).await);
                bar.inc(1);
            }
        })
    });
    gather(callers, &bar).await
}

/// Requests at `rate` per second on average, with exponential gaps
/// (Poisson arrivals), whatever the answers' latency.
pub async fn open_loop(context: Arc<Context>, rate: f64, seed: u64, until: Until) -> Vec<Record> {
    let started = Instant::now();
    let bar = progress(until);
    let mut state = seed ^ 0xA076_1D64_78BD_642F;
    let mut due = Duration::ZERO;
    let mut calls = Vec::new();
    let mut index = 0;
    while until.more(index, started) {
        tokio::time::sleep_until((started + due).into()).await;
        let context = Arc::clone(&context);
        let bar = bar.clone();
        calls.push(tokio::spawn(async move {
            let sample = context.inputs.request(index, context.samples_per_request);
            let record = call::run(index, sample, &context).await;
            bar.inc(1);
            Some(record)
        }));
        index += 1;
        // Exponential gap: -ln(U) / rate, with U uniform in (0, 1].
        let uniform = ((splitmix64(&mut state) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        due += Duration::from_secs_f64(-uniform.ln() / rate);
    }
    gather(calls, &bar).await
}

/// The records of every task, once all have ended; then the bar is cleared.
/// A task that panicked leaves no records.
async fn gather<R: IntoIterator<Item = Record>>(
    tasks: impl IntoIterator<Item = tokio::task::JoinHandle<R>>,
    bar: &ProgressBar,
) -> Vec<Record> {
    let records = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    bar.finish_and_clear();
    records
}
