//! The engine's batching: batched answers equal unbatched ones request by
//! request, and the batch timeout bounds how long a lone request waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dnet_model::batch::BatchPolicy;
use dnet_model::engine::{Engine, EngineSettings, Job, Outcome};
use dnet_model::model::DEFAULT_THRESHOLDS;
use dnet_model::observer::EngineObserver;
use dnet_model::request::{Prepared, UnitSettings};
use dnet_model::settings::Precision;
use dnet_model::weights::{seeded, WeightSource};
use dnet_proto::{ComputationResponse, Data, StatusCode};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

const EXIT: usize = 8;
/// Random weights come from libtorch's global generator, which `randn` also
/// draws from: tests of this file run one at a time, or one's draws between
/// another's seeding and initialisation would give its engines other weights.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const SEED: u64 = 3;

fn unit(threshold: f64) -> UnitSettings {
    let mut thresholds = DEFAULT_THRESHOLDS;
    thresholds[EXIT - 1] = threshold;
    UnitSettings {
        max_request_samples: 8,
        ..UnitSettings::new(EXIT, thresholds, "engine-test")
    }
}

/// Counts the engine's forward passes.
#[derive(Default)]
struct Forwards(std::sync::atomic::AtomicU64);

impl EngineObserver for Forwards {
    fn forward(&self, _samples: usize, _took: Duration, _shadow: bool) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn waited(&self, _waited: Duration, _shadow: bool) {}
}

impl Forwards {
    fn count(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn engine(threshold: f64, max_samples: usize, timeout: Duration) -> (Engine, Arc<Forwards>) {
    let metrics = Arc::new(Forwards::default());
    let settings = EngineSettings {
        threads: 1,
        precision: Precision::F32,
        batching: BatchPolicy { max_samples, timeout },
    };
    let engine = Engine::start(
        WeightSource::Random(SEED),
        unit(threshold),
        settings,
        Arc::clone(&metrics) as Arc<dyn EngineObserver>,
    )
    .expect("the model loads");
    (engine, metrics)
}

/// Requests of start layers 0 and 4 and of 1 to 3 samples, deterministic.
fn requests() -> Vec<(usize, Tensor)> {
    seeded(5, || {
        [(0, 1), (4, 2), (0, 3), (0, 1), (4, 1), (0, 2), (4, 3), (0, 1)]
            .into_iter()
            .map(|(start, n)| {
                let [c, h, w] = dnet_codec::BOUNDARY_SHAPES[start].map(|d| d as i64);
                (start, Tensor::randn([n, c, h, w], (Kind::Float, Device::Cpu)))
            })
            .collect()
    })
}

fn job(start: usize, x: &Tensor) -> (Job, tokio::sync::oneshot::Receiver<Outcome>) {
    let (done, outcome) = tokio::sync::oneshot::channel();
    let job = Job {
        request: Prepared::new(start, x.copy()),
        received: Instant::now(),
        deadline: None,
        done,
    };
    (job, outcome)
}

fn reply(outcome: Outcome) -> ComputationResponse {
    match outcome {
        Outcome::Reply(response) => *response,
        other => panic!("not computed: {other:?}"),
    }
}

/// Each request alone, one after the other.
async fn one_by_one(engine: &Engine, requests: &[(usize, Tensor)]) -> Vec<ComputationResponse> {
    let mut answers = Vec::new();
    for (start, x) in requests {
        let (job, outcome) = job(*start, x);
        engine.submit(job).expect("engine runs");
        answers.push(reply(outcome.await.expect("answered")));
    }
    answers
}

/// The F32 values of tensor `name` in a safetensors buffer.
fn values(buffer: &[u8], name: &str) -> Vec<f32> {
    let tensors = SafeTensors::deserialize(buffer).expect("safetensors");
    let view = tensors.tensor(name).expect("tensor");
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The tensor an answer carries: `probs` of a result, or the `x` handed on.
fn carried(answer: &ComputationResponse) -> Vec<f32> {
    match &answer.data {
        Some(Data::Result(result)) => values(result, "probs"),
        Some(Data::NextRequest(next)) => values(&next.x, "x"),
        other => panic!("no tensor in {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_answers_equal_unbatched_answers_request_by_request() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let requests = requests();
    // A threshold between the requests' confidences, so that both decisions occur.
    let (probe, _) = engine(0.0, 1, Duration::ZERO);
    let mut confidences: Vec<f32> = one_by_one(&probe, &requests)
        .await
        .iter()
        .map(|a| a.confidence)
        .collect();
    probe.join();
    confidences.sort_by(f32::total_cmp);
    // The widest gap between neighbours: far from both, so that summation
    // order cannot flip a decision.
    let gap = (1..confidences.len())
        .max_by(|&i, &j| (confidences[i] - confidences[i - 1]).total_cmp(&(confidences[j] - confidences[j - 1])))
        .expect("several requests");
    let threshold = f64::from(confidences[gap - 1] + confidences[gap]) / 2.0;
    assert!(confidences[gap] - confidences[gap - 1] > 1e-4, "{confidences:?}");

    let (unbatched, _) = engine(threshold, 1, Duration::ZERO);
    let alone = one_by_one(&unbatched, &requests).await;
    unbatched.join();
    // All submitted at once; the timeout lets them gather into batches.
    let (batched, metrics) = engine(threshold, 32, Duration::from_millis(500));
    let outcomes: Vec<_> = requests
        .iter()
        .map(|(start, x)| {
            let (job, outcome) = job(*start, x);
            batched.submit(job).expect("engine runs");
            outcome
        })
        .collect();
    let mut together = Vec::new();
    for outcome in outcomes {
        together.push(reply(outcome.await.expect("answered")));
    }
    batched.join();

    let forwards = metrics.count();
    assert!(
        forwards < requests.len() as u64,
        "{} requests ran in {forwards} forward passes: they were batched",
        requests.len()
    );
    assert!(alone.iter().any(|a| a.status == StatusCode::Success as i32));
    assert!(alone.iter().any(|a| a.status == StatusCode::NotSuccess as i32));
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.status, b.status, "request {i}: same exit decision");
        assert_eq!(a.exit_layer, b.exit_layer, "request {i}");
        assert!((a.confidence - b.confidence).abs() <= 1e-5, "request {i}: confidence");
        let (x, y) = (carried(a), carried(b));
        assert_eq!(x.len(), y.len(), "request {i}: its own samples only");
        let scale = x.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
        let error = x.iter().zip(&y).fold(0.0_f32, |m, (p, q)| m.max((p - q).abs())) / scale;
        assert!(error <= 1e-5, "request {i}: relative difference {error:e}");
        if let (Some(Data::Result(r)), Some(Data::Result(s))) = (&a.data, &b.data) {
            let category = |buffer: &[u8]| {
                SafeTensors::deserialize(buffer)
                    .expect("result")
                    .tensor("category")
                    .expect("category")
                    .data()
                    .to_vec()
            };
            assert_eq!(category(r), category(s), "request {i}: same categories");
        }
        let (hop_a, hop_b) = (&a.hops[0], &b.hops[0]);
        assert_eq!(
            hop_a.batch_size as i64,
            requests[i].1.size()[0],
            "alone: its own samples"
        );
        assert!(hop_b.batch_size as i64 >= requests[i].1.size()[0], "{hop_b:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_waits_the_batch_timeout_and_no_longer() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let timeout = Duration::from_millis(300);
    let (engine, _) = engine(1.0, 32, timeout);
    let x = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    for _ in 0..2 {
        let (job, outcome) = job(0, &x);
        engine.submit(job).expect("engine runs");
        let answer = reply(outcome.await.expect("answered"));
        let waited = Duration::from_micros(answer.hops[0].queue_wait_us);
        assert!(waited >= timeout, "a batch that is not full waits for more: {waited:?}");
        assert!(
            waited < timeout + Duration::from_secs(1),
            "but not much longer than the timeout: {waited:?}"
        );
        assert_eq!(answer.hops[0].batch_size, 1);
    }
    engine.join();
}
