//! The decode thread: checks and decodes each request as it arrives, in
//! arrival order (which batching follows), and hands it to the model thread.
//! Off the callers' threads: a large or hostile request must not hold up the
//! runtime that serves gRPC or the broker session. Off the model thread:
//! while it decoded, its libgomp workers spun waiting for the next parallel
//! region and took a CPU from every other process; three units with 2
//! threads each on 2 CPUs answered about 20/s instead of about 100/s.

use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use dnet_proto::ComputationRequest;
use tokio::sync::oneshot;

use crate::job::{settle, CallersGone, Job, Outcome};
use crate::request::{prepare_request, refusal, UnitSettings};

/// A request as it came, for the decode thread to check and decode.
#[derive(Debug)]
pub struct EncodedJob {
    pub request: ComputationRequest,
    /// Units that ended holding it, as its carrier counted (the queue's
    /// redeliveries); the larger of this and the request's own is kept.
    pub attempts: u32,
    /// When the request reached the engine's caller.
    pub received: Instant,
    pub deadline: Option<Instant>,
    /// Where the outcome goes: a refusal (ERROR) if it does not pass the checks.
    pub done: oneshot::Sender<Outcome>,
}

/// Starts the decode thread: it decodes what `encoded` brings and hands it
/// to `jobs` until every sender of `encoded` is gone. `waiting` counts the
/// jobs submitted and not yet settled; a request refused or expired here,
/// one whose caller has gone (counted in `gone`), or one the model thread
/// can no longer take, is settled here.
///
/// # Errors
/// The thread could not be started.
pub(crate) fn spawn(
    encoded: mpsc::Receiver<EncodedJob>,
    unit: UnitSettings,
    jobs: mpsc::Sender<Job>,
    waiting: Arc<AtomicUsize>,
    gone: Arc<CallersGone>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("decode".into()).spawn(move || {
        for job in encoded.iter().filter_map(|e| decode(e, &unit, &waiting, &gone)) {
            if let Err(mpsc::SendError(job)) = jobs.send(job) {
                settle(&waiting, job.done, Outcome::Requeue);
            }
        }
    })
}

/// A job ready to wait for a batch, or `None` when nobody waits for it any
/// more (its deadline passed, its caller has gone) or it did not pass the
/// checks (answered ERROR here).
fn decode(encoded: EncodedJob, unit: &UnitSettings, waiting: &AtomicUsize, gone: &CallersGone) -> Option<Job> {
    if encoded.done.is_closed() {
        gone.settle(waiting, encoded.done, encoded.request.shadow);
        return None;
    }
    if encoded.deadline.is_some_and(|deadline| deadline <= Instant::now()) {
        // Nobody waits for it any more: not even decoded.
        settle(waiting, encoded.done, Outcome::Expired);
        return None;
    }
    match prepare_request(&encoded.request, unit) {
        Ok(mut request) => {
            request.attempts = request.attempts.max(encoded.attempts);
            Some(Job {
                request,
                received: encoded.received,
                deadline: encoded.deadline,
                done: encoded.done,
            })
        }
        Err(refused) => {
            let reply = refusal(unit, refused, encoded.received.elapsed());
            settle(waiting, encoded.done, Outcome::Reply(Box::new(reply)));
            None
        }
    }
}
