//! The engine's decode thread: requests are checked and decoded beside the
//! model thread, not between its forwards (where the model thread's libgomp
//! workers would spin, taking a CPU from every other process, while it
//! decodes). And requests whose caller has gone are settled, not computed,
//! by the decode thread and by the model thread as it forms a batch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use dnet_model::batch::BatchPolicy;
use dnet_model::engine::{EncodedJob, Engine, EngineSettings, Job, Outcome};
use dnet_model::model::DEFAULT_THRESHOLDS;
use dnet_model::observer::EngineObserver;
use dnet_model::request::{Prepared, UnitSettings};
use dnet_model::settings::Precision;
use dnet_model::weights::WeightSource;
use dnet_proto::{Bytes, ComputationRequest, StatusCode};
use tch::{Device, Kind, Tensor};
use tokio::sync::oneshot;

/// How long the test waits for a state it needs before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// Holds the model thread in the report of each forward until released,
/// and counts the samples computed and the callers found gone.
struct Gate {
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
    samples: AtomicUsize,
    gone: AtomicUsize,
}

impl EngineObserver for Gate {
    fn forward(&self, samples: usize, _took: Duration, _shadow: bool) {
        self.samples.fetch_add(samples, Ordering::SeqCst);
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
async fn held_engine() -> (Engine, Arc<Gate>, mpsc::Sender<()>, oneshot::Receiver<Outcome>) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
        samples: AtomicUsize::new(0),
        gone: AtomicUsize::new(0),
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
fn image_job() -> (Job, oneshot::Receiver<Outcome>) {
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

/// A request of `x` from layer 0 for the decode thread, and where its outcome comes.
fn encoded_job(x: Bytes) -> (EncodedJob, oneshot::Receiver<Outcome>) {
    let (done, outcome) = oneshot::channel();
    let job = EncodedJob {
        request: ComputationRequest {
            start_layer: 0,
            x,
            ..ComputationRequest::default()
        },
        attempts: 0,
        received: Instant::now(),
        deadline: None,
        done,
    };
    (job, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_is_refused_while_the_model_thread_is_busy() {
    let (engine, _gate, release, computed) = held_engine().await;

    let (bad, refused) = encoded_job(Bytes::from_static(b"not a safetensors buffer"));
    engine.submit_encoded(bad).expect("the decode thread runs");
    let refusal = tokio::time::timeout(PATIENCE, refused)
        .await
        .expect("refused while the model thread is held")
        .expect("answered");
    match refusal {
        Outcome::Reply(reply) => assert_eq!(reply.status, StatusCode::Error as i32, "{reply:?}"),
        other => panic!("an ERROR reply expected, got {other:?}"),
    }

    drop(release);
    let outcome = tokio::time::timeout(PATIENCE, computed)
        .await
        .expect("the held job is answered once released")
        .expect("answered");
    assert!(matches!(outcome, Outcome::Reply(_)), "{outcome:?}");
    engine.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_caller_has_gone_are_settled_not_computed() {
    let (engine, gate, release, computed) = held_engine().await;
    // Gone while waiting for the model thread.
    let (job, outcome) = image_job();
    engine.submit(job).expect("the model thread runs");
    drop(outcome);
    // Gone before the decode thread reached it.
    let x = dnet_model::codec::encode_x(&Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu))).expect("encodes");
    let (encoded, outcome) = encoded_job(x.into());
    drop(outcome);
    engine.submit_encoded(encoded).expect("the decode thread runs");
    // Still waited for.
    let (job, waited_for) = image_job();
    engine.submit(job).expect("the model thread runs");

    drop(release);
    for outcome in [computed, waited_for] {
        let outcome = tokio::time::timeout(PATIENCE, outcome)
            .await
            .expect("answered once released")
            .expect("answered");
        assert!(matches!(outcome, Outcome::Reply(_)), "{outcome:?}");
    }
    engine.join();
    assert_eq!(
        gate.samples.load(Ordering::SeqCst),
        2,
        "the held image and the one still waited for"
    );
    assert_eq!(gate.gone.load(Ordering::SeqCst), 2, "both callers that left, counted");
}
