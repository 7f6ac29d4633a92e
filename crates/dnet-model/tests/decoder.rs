//! The engine's decode thread: requests are checked and decoded beside the
//! model thread, not between its forwards (where the model thread's libgomp
//! workers would spin, taking a CPU from every other process, while it
//! decodes). And requests whose caller has gone are settled, not computed,
//! by the decode thread and by the model thread as it forms a batch.

mod support;

use std::sync::atomic::Ordering;
use std::time::Instant;

use dnet_model::engine::{EncodedJob, Outcome};
use dnet_proto::{Bytes, ComputationRequest, StatusCode};
use support::{held_engine, image_job, PATIENCE};
use tch::{Device, Kind, Tensor};
use tokio::sync::oneshot;

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
