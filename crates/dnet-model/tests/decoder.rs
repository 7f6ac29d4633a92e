//! The engine's decode thread: requests are checked and decoded beside the
//! model thread, not between its forwards (where the model thread's libgomp
//! workers would spin, taking a CPU from every other process, while it
//! decodes).

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

/// Holds the model thread in the report of each forward until released.
struct Gate {
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl EngineObserver for Gate {
    fn forward(&self, _samples: usize, _took: Duration) {
        let _ = self.entered.lock().expect("gate").send(());
        // Returns once released, or at once when the test has let go.
        let _ = self.release.lock().expect("gate").recv();
    }

    fn waited(&self, _waited: Duration) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_is_refused_while_the_model_thread_is_busy() {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let gate = Gate {
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    };
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
        Arc::new(gate),
    )
    .expect("the model loads");

    let (done, computed) = oneshot::channel();
    let x = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let job = Job {
        request: Prepared::new(0, x),
        received: Instant::now(),
        deadline: None,
        done,
    };
    engine.submit(job).expect("the model thread runs");
    tokio::task::spawn_blocking(move || entered.recv_timeout(PATIENCE))
        .await
        .expect("task")
        .expect("the model thread computed the job and is now held");

    let (done, refused) = oneshot::channel();
    let bad = EncodedJob {
        request: ComputationRequest {
            start_layer: 0,
            x: Bytes::from_static(b"not a safetensors buffer"),
            ..ComputationRequest::default()
        },
        attempts: 0,
        received: Instant::now(),
        deadline: None,
        done,
    };
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
