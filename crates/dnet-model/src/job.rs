//! A request waiting for the model thread, and what became of it: what the
//! decode thread hands on and the model thread computes or settles.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dnet_proto::ComputationResponse;
use tokio::sync::oneshot;

use crate::batch::Batchable;
use crate::observer::EngineObserver;
use crate::request::Prepared;

/// A request waiting for the model.
#[derive(Debug)]
pub struct Job {
    pub request: Prepared,
    /// When the request reached the engine's caller (its wait starts here).
    pub received: Instant,
    /// Past this, nobody waits for the answer: the job is not computed.
    pub deadline: Option<Instant>,
    /// Where the outcome goes.
    pub done: oneshot::Sender<Outcome>,
}

impl Batchable for Job {
    fn start(&self) -> usize {
        self.request.start
    }
    fn samples(&self) -> usize {
        self.request.samples
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// What became of a job.
#[derive(Debug)]
pub enum Outcome {
    /// Computed: publish this reply.
    Reply(Box<ComputationResponse>),
    /// Not computed because the engine is stopping: give it back.
    Requeue,
    /// Not computed: its deadline passed while it waited, or would pass
    /// before a forward of it could end.
    Expired,
}

/// Ends a job without computing it: it no longer counts in `waiting`, and
/// `outcome` goes to whoever waits for it.
pub(crate) fn settle(waiting: &AtomicUsize, done: oneshot::Sender<Outcome>, outcome: Outcome) {
    waiting.fetch_sub(1, Ordering::Relaxed);
    let _ = done.send(outcome);
}

/// Jobs settled without computing because their caller had gone: counted
/// for the model thread's last log line, and told to the observer (the
/// decode thread and the model thread both find them).
pub(crate) struct CallersGone {
    count: AtomicU64,
    observer: Arc<dyn EngineObserver>,
}

impl CallersGone {
    pub(crate) fn new(observer: Arc<dyn EngineObserver>) -> Self {
        Self {
            count: AtomicU64::new(0),
            observer,
        }
    }

    /// Settles `done` (a job whose caller has gone) and counts it.
    pub(crate) fn settle(&self, waiting: &AtomicUsize, done: oneshot::Sender<Outcome>, shadow: bool) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.observer.caller_gone(shadow);
        settle(waiting, done, Outcome::Expired);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}
