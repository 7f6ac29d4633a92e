//! The engine tests' own pieces: an observer that holds the model thread
//! inside a forward, and jobs of one image.
#![allow(dead_code)] // each test file uses a different part

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use dnet_model::batch::BatchPolicy;
use dnet_model::engine::{Engine, EngineSettings, Job, Outcome};
use dnet_model::model::DEFAULT_THRESHOLDS;
use dnet_model::observer::EngineObserver;
use dnet_model::request::{Prepared, UnitSettings};
use dnet_model::settings::Precision;
use dnet_model::weights::WeightSource;
use tch::{Device, Kind, Tensor};
use tokio::sync::oneshot;

/// How long a test waits for a state it needs before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Holds the model thread in the report of each forward until released,
/// and counts the samples computed and the callers found gone.
pub struct Gate {
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
    pub samples: AtomicUsize,
    pub gone: AtomicUsize,
    /// Each forward's samples, and whether it was shadow work, in order.
    pub forwards: Mutex<Vec<(usize, bool)>>,
}

impl EngineObserver for Gate {
    fn forward(&self, samples: usize, _took: Duration, shadow: bool) {
        self.samples.fetch_add(samples, Ordering::SeqCst);
        self.forwards.lock().expect("gate").push((samples, shadow));
        let _ = self.entered.lock().expect("gate").send(());
        // Returns once released, or at once when the test has let go.
        let _ = self.release.lock().expect("gate").recv();
    }

    fn waited(&self, _waited: Duration, _shadow: bool) {}

    fn caller_gone(&self, _shadow: bool) {
        self.gone.fetch_add(1, Ordering::SeqCst);
    }
}

/// An engine of exit 8 whose model thread is held inside its first forward
/// (of one image, submitted here; its outcome is returned); dropping the
/// returned sender releases it.
pub async fn held_engine() -> (Engine, Arc<Gate>, mpsc::Sender<()>, oneshot::Receiver<Outcome>) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
        samples: AtomicUsize::new(0),
        gone: AtomicUsize::new(0),
        forwards: Mutex::new(Vec::new()),
    });
    let settings = EngineSettings {
        threads: 1,
        precision: Precision::F32,
        batching: BatchPolicy {
            max_samples: 8,
            timeout: Duration::ZERO,
        },
    };
    let engine = Engine::start(
        WeightSource::Random(1),
        UnitSettings::new(8, DEFAULT_THRESHOLDS, "decoder-test"),
        settings,
        Arc::clone(&gate) as Arc<dyn EngineObserver>,
    )
    .expect("the model loads");
    let (job, computed) = image_job();
    engine.submit(job).expect("the model thread runs");
    tokio::task::spawn_blocking(move || entered.recv_timeout(PATIENCE))
        .await
        .expect("task")
        .expect("the model thread computed the job and is now held");
    (engine, gate, release, computed)
}

/// A job of one image, and where its outcome comes.
pub fn image_job() -> (Job, oneshot::Receiver<Outcome>) {
    let (done, outcome) = oneshot::channel();
    let x = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let job = Job {
        request: Prepared::new(0, x),
        received: Instant::now(),
        deadline: None,
        done,
    };
    (job, outcome)
}
