//! Hostile pickles (`dnet_testkit::hostile`: views of 2^40 elements, a
//! million nested tuples, memo doubling, nested storages, huge names) sent to
//! units that read the original's pickles (`--legacy-pickle`): each is
//! answered ERROR with a bounded message and logged with its reason, the
//! unit stays up and answers a good request after it; through the broker,
//! the worker stays up and nothing goes back to the queue.

mod support;

use std::time::Duration;

use dnet_proto::{ComputationRequest, Data, StatusCode};
use dnet_testkit::{hostile, wait_for, Broker, ComputationUnit, TestQueue, TransmissionUnit};
use support::{images, request};

const SEED: u64 = 11;
/// The longest ERROR message a hostile request may get.
const MESSAGE_BOUND: usize = 1024;
/// Each call's deadline: a refusal takes milliseconds, a good request one forward.
const DEADLINE: Duration = Duration::from_secs(60);

/// Sends every hostile form, then a good request, to `unit`; each hostile
/// one must be answered ERROR with a bounded message.
async fn every_hostile_form_is_refused_then_a_good_request_answered(unit: &TransmissionUnit) {
    let mut client = unit.client().await.expect("client");
    for (name, pickle) in hostile::pickles() {
        let mut call = tonic::Request::new(ComputationRequest {
            start_layer: 0,
            x: pickle.into(),
            ..ComputationRequest::default()
        });
        call.set_timeout(DEADLINE);
        let answer = client
            .compute(call)
            .await
            .unwrap_or_else(|status| panic!("{name}: the unit must answer, not fail: {status:?}"))
            .into_inner();
        assert_eq!(answer.status, StatusCode::Error as i32, "{name}");
        let Some(Data::ErrorMessage(message)) = answer.data else {
            panic!("{name}: an ERROR without a message")
        };
        assert!(message.len() <= MESSAGE_BOUND, "{name}: {} bytes", message.len());
    }
    let answer = client
        .compute(request(0, &images(1, 3)))
        .await
        .expect("a good request after them")
        .into_inner();
    assert_eq!(answer.status, StatusCode::Success as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_unit_refuses_every_hostile_pickle_and_keeps_serving() {
    let mut unit = TransmissionUnit::direct(16, SEED, &["--legacy-pickle", "--timeout", "60s"])
        .await
        .expect("unit starts");
    every_hostile_form_is_refused_then_a_good_request_answered(&unit).await;
    assert!(unit.process.exited().is_none(), "still running");
    let logged = unit.process.events("request answered ERROR");
    assert!(!logged.is_empty(), "refusals are logged with their reason");
    assert!(
        logged
            .iter()
            .all(|event| event["reason"].as_str().is_some_and(|r| !r.is_empty())),
        "{logged:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_every_hostile_pickle_keeps_serving_and_requeues_nothing() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let mut worker = ComputationUnit::start(&broker, queue.name(), 16, SEED, &["--legacy-pickle"])
        .await
        .expect("worker starts");
    let unit = TransmissionUnit::start(&broker, queue.name(), &["--timeout", "60s"])
        .await
        .expect("unit starts");
    every_hostile_form_is_refused_then_a_good_request_answered(&unit).await;
    assert!(worker.process.exited().is_none(), "still running");
    let metrics = worker.metrics().await.expect("metrics");
    assert_eq!(metrics.value("dnet_worker_requeued_total").expect("requeued"), 0.0);
    assert_eq!(
        metrics.value("dnet_worker_redelivered_total").expect("redelivered"),
        0.0
    );
    // A delivery is acknowledged after its reply's confirm, which can follow the answer.
    wait_for("the queue to hold nothing", DEADLINE, || async {
        (broker.queue_counts(queue.name()).ok()? == Some((0, 0, 1))).then_some(())
    })
    .await
    .expect("nothing left in the queue");
    assert!(!worker.process.events("request answered ERROR").is_empty());
}
