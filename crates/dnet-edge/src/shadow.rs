//! Shadow work (`--shadow-rate`): a sampled share of the samples this unit
//! answered early goes on to the last exit anyway, off the caller's path,
//! so that this exit's agreement with the last one is measured on live
//! traffic (`agreement`).
//!
//! The computing side samples them and hands back their tensors as a
//! request marked `shadow`; this edge sends it to the next unit in a task of
//! its own, once (never retried), within [`SHADOW_BUDGET`], and not at all
//! while [`MAX_SHADOW_IN_FLIGHT`] are out. Units on the way compute it only
//! when no ordinary request waits, never answer it early, and refuse it
//! first under load (`admission`). Outcomes: `dnet_shadow{outcome}` counts
//! agreed, disagreed, dropped (not sent, or refused or expired on the way)
//! and failed.

use std::sync::Arc;
use std::time::Duration;

use dnet_codec::Answers;
use dnet_proto::{Bytes, ComputationRequest, Data, StatusCode};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use crate::agreement::Agreement;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::next_unit::NextUnit;

/// How long shadow work may take, all the way to the last exit.
pub const SHADOW_BUDGET: Duration = Duration::from_secs(2);
/// Shadow calls out at once; more samples are dropped, not queued.
pub const MAX_SHADOW_IN_FLIGHT: usize = 8;

/// Sends shadow work and feeds its outcomes to the agreement.
#[derive(Debug)]
pub struct Shadow {
    next: NextUnit,
    agreement: Arc<Agreement>,
    metrics: Arc<Metrics>,
    /// One permit per shadow call out, [`MAX_SHADOW_IN_FLIGHT`] in all.
    in_flight: Arc<Semaphore>,
}

impl Shadow {
    #[must_use]
    pub fn new(next: NextUnit, agreement: Arc<Agreement>, metrics: Arc<Metrics>) -> Self {
        Self {
            next,
            agreement,
            metrics,
            in_flight: Arc::new(Semaphore::new(MAX_SHADOW_IN_FLIGHT)),
        }
    }

    /// Sends `work` (the samples at `rows` of a request this unit answered
    /// with `ours`: its `answered` or its `result` rows) to the next unit in
    /// the background.
    pub fn send(&self, work: ComputationRequest, rows: &[u32], ours: &Bytes, exit: u64) {
        let Ok(ours) = Answers::parse(ours, exit) else {
            return;
        };
        let local: Vec<(i64, f64)> = rows
            .iter()
            .filter_map(|&row| {
                let row = usize::try_from(row).ok()?;
                Some((*ours.category.get(row)?, f64::from(ours.confidence(row)?)))
            })
            .collect();
        self.agreement.shadow_sampled(rows.len());
        if local.len() != rows.len() {
            // Each sampled row is one shadow sample, counted once.
            self.metrics.shadow_n("failed", rows.len() as u64);
            return;
        }
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            self.metrics.shadow_n("dropped", local.len() as u64);
            return;
        };
        let (next, agreement, metrics) = (
            self.next.clone(),
            Arc::clone(&self.agreement),
            Arc::clone(&self.metrics),
        );
        tokio::spawn(
            async move {
                let answer = next.compute_shadow(work, Instant::now() + SHADOW_BUDGET).await;
                drop(permit);
                let last = match answer {
                    Ok(answer) => match (StatusCode::try_from(answer.status), &answer.data) {
                        (Ok(StatusCode::Success), Some(Data::Result(result))) => {
                            Answers::parse(result, answer.exit_layer).ok()
                        }
                        _ => None,
                    },
                    // Refused or expired on the way (here, or at a unit after
                    // the next): shadow work is the first to go.
                    Err(
                        Error::Next {
                            code: tonic::Code::ResourceExhausted | tonic::Code::DeadlineExceeded,
                            ..
                        }
                        | Error::NextDeadline { .. },
                    ) => {
                        metrics.shadow_n("dropped", local.len() as u64);
                        return;
                    }
                    Err(error) => {
                        debug!(%error, "shadow work failed");
                        None
                    }
                };
                let Some(last) = last.filter(|last| last.category.len() == local.len()) else {
                    metrics.shadow_n("failed", local.len() as u64);
                    return;
                };
                for (&(category, confidence), &final_category) in local.iter().zip(&last.category) {
                    let agreed = category == final_category;
                    agreement.shadow_returned(confidence, agreed);
                    metrics.shadow(if agreed { "agreed" } else { "disagreed" });
                }
            }
            // The shadow call goes on in the trace of the call it came from.
            .in_current_span(),
        );
    }
}
