//! The compute thread: one OS thread owns the model (tch tensors are not
//! `Sync`) and computes one job at a time, never preempted.
//!
//! Jobs arrive over a channel and are taken by `next_batch`, which today
//! takes one; batching several requests into one forward pass only needs it
//! to drain more.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dnet_proto::{ComputationResponse, Data, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use crate::request::{handle, UnitSettings};
use crate::weights::{load, WeightSource, WeightsError};

/// A request waiting for the model.
#[derive(Debug)]
pub struct Job {
    /// The serialized `ComputationRequest`.
    pub body: Vec<u8>,
    /// When the worker received it (queue wait inside the worker starts here).
    pub received: Instant,
    /// Where the outcome goes.
    pub done: oneshot::Sender<Outcome>,
}

/// What became of a job.
#[derive(Debug)]
pub enum Outcome {
    /// Computed (or rejected): publish this reply.
    Reply(ComputationResponse),
    /// Not computed because the unit is stopping: give it back to the queue.
    Requeue,
}

/// Handle to the compute thread.
#[derive(Debug)]
pub struct Engine {
    jobs: mpsc::UnboundedSender<Job>,
    stopping: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Engine {
    /// Starts the thread, loads the weights there, and returns once the model
    /// is ready (or failed to load).
    ///
    /// # Errors
    /// The weights could not be loaded; the message names what is wrong.
    pub fn start(source: WeightSource, settings: UnitSettings, threads: Option<i32>) -> Result<Engine, WeightsError> {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name("model".into())
            .spawn(move || {
                if let Some(threads) = threads {
                    tch::set_num_threads(threads);
                }
                let loaded_at = Instant::now();
                let loaded = match load(&source, settings.device) {
                    Ok(loaded) => loaded,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                info!(exit = settings.exit, device = ?settings.device, threads = tch::get_num_threads(),
                    load_ms = loaded_at.elapsed().as_millis() as u64, "model ready");
                let _ = ready_tx.send(Ok(()));
                let _no_grad = tch::no_grad_guard();
                while let Some(batch) = next_batch(&mut queue) {
                    for job in batch {
                        let outcome = if stop_flag.load(Ordering::SeqCst) {
                            Outcome::Requeue
                        } else {
                            Outcome::Reply(run_guarded(|| {
                                handle(&loaded.model, &settings, &job.body, job.received.elapsed())
                            }))
                        };
                        let _ = job.done.send(outcome);
                    }
                }
            })
            .map_err(|e| WeightsError::Read {
                path: "(model thread)".into(),
                message: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Engine { jobs, stopping, thread }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(WeightsError::Read {
                path: "(model thread)".into(),
                message: "the model thread died while loading".into(),
            }),
        }
    }

    /// Queues a job; `Err` gives it back if the thread has ended.
    ///
    /// # Errors
    /// The compute thread is gone.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.jobs.send(job).map_err(|e| e.0)
    }

    /// From now on, queued jobs come back as [`Outcome::Requeue`]; the job
    /// being computed finishes.
    pub fn stop_taking_new(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Ends the thread after the jobs already queued, and waits for it.
    pub fn join(self) {
        drop(self.jobs);
        if self.thread.join().is_err() {
            error!("the model thread panicked");
        }
    }
}

/// The next jobs to compute together; `None` when the channel is closed.
fn next_batch(queue: &mut mpsc::UnboundedReceiver<Job>) -> Option<Vec<Job>> {
    queue.blocking_recv().map(|job| vec![job])
}

/// Runs `compute`, turning a panic inside libtorch into an ERROR reply so the
/// worker keeps serving.
fn run_guarded(compute: impl FnOnce() -> ComputationResponse) -> ComputationResponse {
    catch_unwind(AssertUnwindSafe(compute)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        error!(message, "computation panicked; answering ERROR");
        ComputationResponse {
            status: StatusCode::Error as i32,
            data: Some(Data::ErrorMessage(format!("internal error while computing: {message}"))),
            ..ComputationResponse::default()
        }
    })
}
