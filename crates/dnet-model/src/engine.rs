//! The compute thread: one OS thread owns the model (tch tensors are not
//! `Sync`) and runs one forward pass at a time, never preempted. Requests
//! waiting for it that share a start layer run together as one batch
//! (`batch.rs` states the policy); each keeps its own decision, reply,
//! confidence and hop record.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

use dnet_proto::ComputationResponse;
use tch::Tensor;
use tokio::sync::oneshot;
use tracing::{error, info};

use crate::batch::{self, BatchPolicy, Batchable, CostModel};
use crate::metrics::EngineMetrics;
use crate::model::MultiExitInception;
use crate::options::Precision;
use crate::request::{error_response, hop_record, respond, Prepared, UnitSettings};
use crate::weights::{load, WeightSource, WeightsError};

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
    Reply(ComputationResponse),
    /// Not computed because the engine is stopping: give it back.
    Requeue,
    /// Not computed: its deadline passed while it waited, or would pass
    /// before a forward of it could end.
    Expired,
}

/// How the engine computes, besides what a unit does with requests.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// libtorch intra-op threads.
    pub threads: i32,
    /// The dtype the network computes in.
    pub precision: Precision,
    pub batching: BatchPolicy,
}

/// Handle to the compute thread.
#[derive(Debug)]
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    stopping: Arc<AtomicBool>,
    /// Jobs submitted and not yet taken into a forward or settled otherwise.
    waiting: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

/// What the compute thread owns.
struct Worker {
    model: MultiExitInception,
    unit: UnitSettings,
    batching: BatchPolicy,
    metrics: Arc<EngineMetrics>,
    stopping: Arc<AtomicBool>,
    waiting: Arc<AtomicUsize>,
    /// What forwards took lately, to fit batches to deadlines.
    cost: CostModel,
}

impl Engine {
    /// Starts the thread, loads the weights there, and returns once the model
    /// is ready (or failed to load).
    ///
    /// # Errors
    /// The weights could not be loaded; the message names what is wrong.
    pub fn start(
        source: WeightSource,
        unit: UnitSettings,
        settings: EngineSettings,
        metrics: Arc<EngineMetrics>,
    ) -> Result<Engine, WeightsError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stopping);
        let waiting = Arc::new(AtomicUsize::new(0));
        let waiting_count = Arc::clone(&waiting);
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
                    metrics,
                    stopping: stop_flag,
                    waiting: waiting_count,
                    cost: CostModel::default(),
                }
                .run(&queue);
            })
            .map_err(|e| WeightsError::Read {
                path: "(model thread)".into(),
                message: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Engine {
                jobs,
                stopping,
                waiting,
                thread,
            }),
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
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.jobs.send(job).map_err(|e| {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            e.0
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
        drop(self.jobs);
        if self.thread.join().is_err() {
            error!("the model thread panicked");
        }
    }
}

impl Worker {
    /// Forms and computes batches until every sender is gone.
    fn run(mut self, queue: &mpsc::Receiver<Job>) {
        let mut waiting = VecDeque::new();
        loop {
            if waiting.is_empty() {
                match queue.recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(_) => return,
                }
            }
            waiting.extend(queue.try_iter());
            let mut batch = batch::take(&mut waiting, self.batching.max_samples);
            self.wait_for_more(queue, &mut batch, &mut waiting);
            if self.stopping.load(Ordering::SeqCst) {
                for job in batch.into_iter().chain(waiting.drain(..)) {
                    self.settle(job, Outcome::Requeue);
                }
                continue;
            }
            let fitted = batch::fit_deadlines(batch, Instant::now(), &self.cost);
            for job in fitted.hopeless {
                self.settle(job, Outcome::Expired);
            }
            for job in fitted.later.into_iter().rev() {
                waiting.push_front(job);
            }
            if !fitted.run.is_empty() {
                self.compute(fitted.run);
            }
        }
    }

    /// Lets a batch that is not full wait up to the batch timeout for more
    /// jobs of its start layer; jobs of other start layers queue up.
    fn wait_for_more(&self, queue: &mpsc::Receiver<Job>, batch: &mut Vec<Job>, waiting: &mut VecDeque<Job>) {
        if self.batching.timeout.is_zero() {
            return;
        }
        let until = Instant::now() + self.batching.timeout;
        while batch::samples(batch) < self.batching.max_samples {
            let left = until.saturating_duration_since(Instant::now());
            match queue.recv_timeout(left) {
                Ok(job) if batch::fits(batch, &job, self.batching.max_samples) => batch.push(job),
                Ok(job) => waiting.push_back(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Ends a job without computing it.
    fn settle(&self, job: Job, outcome: Outcome) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let _ = job.done.send(outcome);
    }

    /// One forward pass over `batch`; every job gets its reply.
    fn compute(&mut self, batch: Vec<Job>) {
        self.waiting.fetch_sub(batch.len(), Ordering::Relaxed);
        let started = Instant::now();
        let samples = batch::samples(&batch);
        let start = batch.first().map_or(0, |job| job.request.start);
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
        self.cost.observe(start, samples, compute, Instant::now());
        self.metrics.batch_size.observe(samples as f64);
        self.metrics.compute_seconds.observe(compute.as_secs_f64());
        let replies = replies.unwrap_or_else(|message| vec![Err(message); batch.len()]);
        for (job, reply) in batch.into_iter().zip(replies) {
            let queue_wait = started.saturating_duration_since(job.received);
            self.metrics.queue_wait_seconds.observe(queue_wait.as_secs_f64());
            let mut response = reply.unwrap_or_else(error_response);
            response.hops = vec![hop_record(
                &self.unit,
                job.request.start as u64,
                queue_wait,
                compute,
                samples,
            )];
            let _ = job.done.send(Outcome::Reply(response));
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
