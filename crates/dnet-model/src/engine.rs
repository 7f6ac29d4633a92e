//! The compute thread: one OS thread owns the model (tch tensors are not
//! `Sync`) and runs one forward pass at a time, never preempted. Requests
//! waiting for it that share a start layer run together as one batch
//! (`batch.rs` states the policy); each keeps its own decision, reply,
//! confidence and hop record. Shadow work (`--shadow-rate`) waits in a lane
//! of its own: it runs only when no ordinary request waits, never in a batch
//! with one, and the oldest is dropped when more than
//! [`MAX_SHADOW_WAITING`] wait.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

use dnet_proto::ComputationResponse;
use tch::Tensor;
use tracing::{error, info};

use crate::batch::{self, BatchPolicy, CostModel};
use crate::decoder;
pub use crate::decoder::EncodedJob;
use crate::job::CallersGone;
pub use crate::job::{Job, Outcome};
use crate::model::MultiExitInception;
use crate::observer::EngineObserver;
use crate::request::{effective_threshold, error_response, hop_record, respond, UnitSettings};
use crate::settings::Precision;
use crate::weights::{load, WeightSource, WeightsError};

/// Shadow jobs that may wait; a newer one drops the oldest (it would be
/// stale by the time the model is free).
pub const MAX_SHADOW_WAITING: usize = 16;

/// The model thread has ended: nothing more is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the model thread has ended")]
pub struct Stopped;

/// How the engine computes, besides what a unit does with requests.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// libtorch intra-op threads.
    pub threads: i32,
    /// The dtype the network computes in.
    pub precision: Precision,
    pub batching: BatchPolicy,
}

/// Handle to the decode and compute threads.
#[derive(Debug)]
pub struct Engine {
    /// Requests for the decode thread (`decoder.rs`).
    encoded: mpsc::Sender<EncodedJob>,
    decoder: std::thread::JoinHandle<()>,
    /// Decoded jobs for the model thread.
    jobs: mpsc::Sender<Job>,
    stopping: Arc<AtomicBool>,
    /// Jobs submitted and not yet taken into a forward or settled otherwise.
    waiting: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

/// The requests waiting for the model: ordinary ones, and shadow work.
#[derive(Default)]
struct Lanes {
    ordinary: VecDeque<Job>,
    shadow: VecDeque<Job>,
}

impl Lanes {
    fn is_empty(&self) -> bool {
        self.ordinary.is_empty() && self.shadow.is_empty()
    }
}

/// What the compute thread owns.
struct Worker {
    model: MultiExitInception,
    unit: UnitSettings,
    batching: BatchPolicy,
    observer: Arc<dyn EngineObserver>,
    stopping: Arc<AtomicBool>,
    waiting: Arc<AtomicUsize>,
    /// What forwards took lately, to fit batches to deadlines.
    cost: CostModel,
    /// Forward passes run, and jobs given back uncomputed because the
    /// engine was stopping: the last log line says both.
    forwards: u64,
    given_back: u64,
    /// Jobs settled uncomputed because their caller had gone, here and in
    /// the decode thread.
    gone: Arc<CallersGone>,
}

impl Engine {
    /// Starts the model thread, loads the weights there, then the decode
    /// thread, and returns once the model is ready (or failed to load).
    ///
    /// # Errors
    /// The weights could not be loaded; the message names what is wrong.
    pub fn start(
        source: WeightSource,
        unit: UnitSettings,
        settings: EngineSettings,
        observer: Arc<dyn EngineObserver>,
    ) -> Result<Engine, WeightsError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stopping);
        let waiting = Arc::new(AtomicUsize::new(0));
        let waiting_count = Arc::clone(&waiting);
        let decode_unit = unit.clone();
        let gone = Arc::new(CallersGone::new(Arc::clone(&observer)));
        let decode_gone = Arc::clone(&gone);
        let thread = std::thread::Builder::new()
            .name("model".into())
            .spawn(move || {
                tch::set_num_threads(settings.threads);
                let loaded_at = Instant::now();
                let model = match load(&source, unit.device, settings.precision) {
                    Ok(loaded) => loaded.model,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                info!(exit = unit.exit, device = ?unit.device, threads = tch::get_num_threads(),
                    precision = ?settings.precision, max_batch_size = settings.batching.max_samples,
                    batch_timeout_ms = settings.batching.timeout.as_secs_f64() * 1e3,
                    load_ms = loaded_at.elapsed().as_millis() as u64, "model ready");
                let _ = ready_tx.send(Ok(()));
                let _no_grad = tch::no_grad_guard();
                Worker {
                    model,
                    unit,
                    batching: settings.batching,
                    observer,
                    stopping: stop_flag,
                    waiting: waiting_count,
                    cost: CostModel::default(),
                    forwards: 0,
                    given_back: 0,
                    gone,
                }
                .run(&queue);
            })
            .map_err(|e| WeightsError::Read {
                path: "(model thread)".into(),
                message: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(WeightsError::Read {
                    path: "(model thread)".into(),
                    message: "the model thread died while loading".into(),
                })
            }
        }
        let (encoded, encoded_queue) = mpsc::channel::<EncodedJob>();
        let decoder = decoder::spawn(
            encoded_queue,
            decode_unit,
            jobs.clone(),
            Arc::clone(&waiting),
            decode_gone,
        )
        .map_err(|e| WeightsError::Read {
            path: "(decode thread)".into(),
            message: e.to_string(),
        })?;
        Ok(Engine {
            encoded,
            decoder,
            jobs,
            stopping,
            waiting,
            thread,
        })
    }

    /// Queues a job.
    ///
    /// # Errors
    /// The compute thread is gone.
    pub fn submit(&self, job: Job) -> Result<(), Stopped> {
        self.send_counted(&self.jobs, job)
    }

    /// Queues a request for the decode thread to check and decode, in
    /// arrival order, on its way to the model thread (`decoder.rs`).
    ///
    /// # Errors
    /// The decode thread is gone.
    pub fn submit_encoded(&self, job: EncodedJob) -> Result<(), Stopped> {
        self.send_counted(&self.encoded, job)
    }

    /// Counts `item` as waiting and sends it; counted out again if the
    /// thread behind `to` is gone.
    fn send_counted<T>(&self, to: &mpsc::Sender<T>, item: T) -> Result<(), Stopped> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        to.send(item).map_err(|_| {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            Stopped
        })
    }

    /// Jobs waiting for the model (not yet in a forward).
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// From now on, waiting jobs come back as [`Outcome::Requeue`]; the batch
    /// being computed finishes.
    pub fn stop_taking_new(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Ends the thread after the jobs already queued, and waits for it.
    pub fn join(self) {
        // The decode thread hands on what it was given, then lets go of its
        // sender of jobs; the model thread ends once no sender is left.
        drop(self.encoded);
        if self.decoder.join().is_err() {
            error!("the decode thread panicked");
        }
        drop(self.jobs);
        if self.thread.join().is_err() {
            error!("the model thread panicked");
        }
    }
}

impl Worker {
    /// Forms and computes batches until every sender is gone.
    fn run(mut self, queue: &mpsc::Receiver<Job>) {
        let mut lanes = Lanes::default();
        loop {
            if lanes.is_empty() {
                match queue.recv() {
                    Ok(job) => self.queue(job, &mut lanes),
                    Err(_) => {
                        info!(
                            forwards = self.forwards,
                            given_back = self.given_back,
                            callers_gone = self.gone.count(),
                            "model thread stopped"
                        );
                        return;
                    }
                }
            }
            for job in queue.try_iter() {
                self.queue(job, &mut lanes);
            }
            // Shadow work only when no ordinary request waits.
            let shadow = lanes.ordinary.is_empty();
            let lane = if shadow { &mut lanes.shadow } else { &mut lanes.ordinary };
            let mut batch = batch::take(lane, self.batching.max_samples);
            if !shadow {
                self.wait_for_more(queue, &mut batch, &mut lanes);
            }
            let batch = self.without_callers_gone(batch);
            if self.stopping.load(Ordering::SeqCst) {
                let shadows: Vec<Job> = lanes.shadow.drain(..).collect();
                for job in batch.into_iter().chain(lanes.ordinary.drain(..)).chain(shadows) {
                    let outcome = if job.request.shadow {
                        Outcome::Expired
                    } else {
                        Outcome::Requeue
                    };
                    self.settle(job, outcome);
                }
                continue;
            }
            let fitted = batch::fit_deadlines(batch, Instant::now(), &self.cost);
            for job in fitted.hopeless {
                self.settle(job, Outcome::Expired);
            }
            let lane = if shadow { &mut lanes.shadow } else { &mut lanes.ordinary };
            for job in fitted.later.into_iter().rev() {
                lane.push_front(job);
            }
            if !fitted.run.is_empty() {
                self.compute(fitted.run);
            }
        }
    }

    /// Puts a job in its lane; a shadow job beyond [`MAX_SHADOW_WAITING`]
    /// drops the oldest.
    fn queue(&mut self, job: Job, lanes: &mut Lanes) {
        if !job.request.shadow {
            lanes.ordinary.push_back(job);
            return;
        }
        lanes.shadow.push_back(job);
        if lanes.shadow.len() > MAX_SHADOW_WAITING {
            if let Some(oldest) = lanes.shadow.pop_front() {
                self.settle(oldest, Outcome::Expired);
            }
        }
    }

    /// Lets a batch that is not full wait up to the batch timeout for more
    /// jobs of its start layer; jobs of other start layers queue up.
    fn wait_for_more(&mut self, queue: &mpsc::Receiver<Job>, batch: &mut Vec<Job>, lanes: &mut Lanes) {
        if self.batching.timeout.is_zero() {
            return;
        }
        let until = Instant::now() + self.batching.timeout;
        while batch::samples(batch) < self.batching.max_samples {
            let left = until.saturating_duration_since(Instant::now());
            match queue.recv_timeout(left) {
                Ok(job) if !job.request.shadow && batch::fits(batch, &job, self.batching.max_samples) => {
                    batch.push(job);
                }
                Ok(job) => self.queue(job, lanes),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// The jobs of `batch` someone still waits for; the others (their
    /// caller cancelled, or answered otherwise and dropped the call) are
    /// settled without computing, and counted.
    fn without_callers_gone(&mut self, batch: Vec<Job>) -> Vec<Job> {
        let (gone, waited_for): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|job| job.done.is_closed());
        for job in gone {
            self.gone.settle(&self.waiting, job.done, job.request.shadow);
        }
        waited_for
    }

    /// Ends a job without computing it.
    fn settle(&mut self, job: Job, outcome: Outcome) {
        if matches!(outcome, Outcome::Requeue) {
            self.given_back += 1;
        }
        crate::job::settle(&self.waiting, job.done, outcome);
    }

    /// One forward pass over `batch`; every job gets its reply.
    fn compute(&mut self, batch: Vec<Job>) {
        self.forwards += 1;
        self.waiting.fetch_sub(batch.len(), Ordering::Relaxed);
        let started = Instant::now();
        let samples = batch::samples(&batch);
        let start = batch.first().map_or(0, |job| job.request.start);
        // Shadow work is never batched with ordinary requests.
        let shadow = batch.first().is_some_and(|job| job.request.shadow);
        let replies = catch_unwind(AssertUnwindSafe(|| self.forward(&batch))).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic")
                .to_owned();
            error!(message, samples, "computation panicked; answering ERROR");
            Err(format!("internal error while computing: {message}"))
        });
        let compute = started.elapsed();
        if replies.is_ok() {
            // A failed forward says nothing of what a forward costs: one that
            // failed at once would make hopeless requests look feasible, one
            // that failed slowly would make every request look hopeless.
            self.cost.observe(start, samples, compute, Instant::now());
        }
        self.observer.forward(samples, compute, shadow);
        let replies = replies.unwrap_or_else(|message| vec![Err(message); batch.len()]);
        for (job, reply) in batch.into_iter().zip(replies) {
            let queue_wait = started.saturating_duration_since(job.received);
            self.observer.waited(queue_wait, shadow);
            let mut response = reply.unwrap_or_else(error_response);
            let mut hop = hop_record(&self.unit, job.request.start as u64, queue_wait, compute, samples);
            hop.threshold = effective_threshold(&self.unit, &job.request).unwrap_or(0.0);
            response.hops = vec![hop];
            let _ = job.done.send(Outcome::Reply(Box::new(response)));
        }
    }

    /// The batch's outputs, one reply (or why there is none) per job in order.
    fn forward(&self, batch: &[Job]) -> Result<Vec<Result<ComputationResponse, String>>, String> {
        let start = batch.first().map_or(0, |job| job.request.start);
        let inputs: Vec<&Tensor> = batch.iter().map(|job| &job.request.x).collect();
        let x = Tensor::f_cat(&inputs, 0).map_err(|e| e.to_string())?;
        let output = self
            .model
            .forward(&x.to_device(self.unit.device), start, self.unit.exit)
            .map_err(|e| e.to_string())?;
        let (probs, trunk) = (output.probs.to_device(tch::Device::Cpu), output.trunk);
        let trunk = trunk.map(|t| t.to_device(tch::Device::Cpu));
        let mut offset = 0;
        Ok(batch
            .iter()
            .map(|job| {
                let n = job.request.samples as i64;
                let slice = |t: &Tensor| t.narrow(0, offset, n);
                let trunk = trunk.as_ref().map(slice);
                let reply = respond(&self.unit, &job.request, &slice(&probs), trunk.as_ref());
                offset += n;
                reply
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dnet_proto::StatusCode;
    use tch::{Device, Kind};
    use tokio::sync::oneshot;

    use super::*;
    use crate::model::DEFAULT_THRESHOLDS;
    use crate::request::Prepared;
    use crate::weights::WeightSource;

    fn job(x: Tensor) -> (Job, oneshot::Receiver<Outcome>) {
        let (done, outcome) = oneshot::channel();
        let job = Job {
            request: Prepared::new(0, x),
            received: Instant::now(),
            deadline: None,
            done,
        };
        (job, outcome)
    }

    fn status(outcome: oneshot::Receiver<Outcome>) -> i32 {
        match outcome.blocking_recv() {
            Ok(Outcome::Reply(reply)) => reply.status,
            other => panic!("a reply expected, got {other:?}"),
        }
    }

    #[test]
    fn a_failed_forward_teaches_the_cost_model_nothing() {
        let model = load(&WeightSource::Random(1), Device::Cpu, Precision::F32)
            .expect("random weights")
            .model;
        let _no_grad = tch::no_grad_guard();
        let mut worker = Worker {
            model,
            unit: UnitSettings::new(16, DEFAULT_THRESHOLDS, "engine-test"),
            batching: BatchPolicy {
                max_samples: 8,
                timeout: Duration::ZERO,
            },
            observer: Arc::new(crate::observer::Unobserved),
            stopping: Arc::new(AtomicBool::new(false)),
            waiting: Arc::new(AtomicUsize::new(2)),
            cost: CostModel::default(),
            forwards: 0,
            given_back: 0,
            gone: Arc::new(CallersGone::new(Arc::new(crate::observer::Unobserved))),
        };

        // Images far too small for the network: the forward fails.
        let (bad, outcome) = job(Tensor::zeros([1, 3, 2, 2], (Kind::Float, Device::Cpu)));
        worker.compute(vec![bad]);
        assert_eq!(status(outcome), StatusCode::Error as i32);
        assert_eq!(
            worker.cost.estimate(0, 1, Instant::now()),
            Duration::ZERO,
            "nothing learnt"
        );

        let (good, outcome) = job(Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu)));
        worker.compute(vec![good]);
        assert_eq!(status(outcome), StatusCode::Success as i32);
        assert!(
            worker.cost.estimate(0, 1, Instant::now()) > Duration::ZERO,
            "a forward that worked teaches it"
        );
    }
}
