//! Answers: each request at the exit its thresholds choose, and a cascade of workers as `infer` computes it.

use dnet_model::codec;
use dnet_proto::{Data, StatusCode};
use dnet_testkit::{Broker, TestQueue};

use super::support::{images, infer, request, result_tensors, thresholds};
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_the_thresholds_exactly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let x = images(2, 1);
    let reference = infer(dir.path(), &x, SEED, 0, 8);
    // Each sample exits on its own: below the least confident sample every
    // one is answered here, above the most confident none is.
    let confidence = reference["confidence"].min().double_value(&[]);
    let highest = reference["confidence"].max().double_value(&[]);

    for (threshold, expected) in [
        (confidence - 1e-4, StatusCode::Success),
        (highest + 1e-4, StatusCode::NotSuccess),
    ] {
        let broker = Broker::local();
        let queue = TestQueue::new(&broker);
        let unit = unit(&broker, &queue, &["--timeout", "60s"]).await;
        let _worker = worker(&broker, &queue, 8, &["--thresholds", &thresholds(threshold)]).await;

        let answer = unit
            .client()
            .await
            .expect("client")
            .compute(request(0, &x))
            .await
            .expect("answer")
            .into_inner();

        assert_eq!(
            answer.status, expected as i32,
            "threshold {threshold} vs confidence {confidence}"
        );
        assert!((f64::from(answer.confidence) - confidence).abs() < 1e-6);
        match expected {
            StatusCode::Success => {
                let result = result_tensors(&answer);
                assert!(result["probs"].allclose(&reference["probs"], 1e-5, 1e-6, false));
                assert!(result["category"].equal(&reference["category"]));
                assert_eq!(answer.exit_layer, 8);
            }
            _ => {
                let Some(Data::NextRequest(next)) = &answer.data else {
                    panic!("no next request")
                };
                assert_eq!(next.start_layer, 8);
                let trunk = codec::decode_x(&next.x, 8, 64).expect("a valid layer-8 tensor");
                assert_eq!(trunk.size(), reference["x"].size(), "every sample handed on");
                assert!(trunk.allclose(&reference["x"], 1e-5, 1e-6, false));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_unit_cascade_answers_what_infer_gives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let x = images(1, 2);
    let reference = infer(dir.path(), &x, SEED, 0, 16);
    let broker = Broker::local();
    let queues = [
        TestQueue::new(&broker),
        TestQueue::new(&broker),
        TestQueue::new(&broker),
    ];
    let never = thresholds(1.0);
    let _workers = futures::future::join3(
        worker(&broker, &queues[0], 8, &["--thresholds", &never]),
        worker(&broker, &queues[1], 12, &["--thresholds", &never]),
        worker(&broker, &queues[2], 16, &[]),
    )
    .await;
    let last = unit(&broker, &queues[2], &["--timeout", "60s"]).await;
    let middle = unit(&broker, &queues[1], &["--timeout", "60s", "-n", &last.endpoint()]).await;
    let first = unit(&broker, &queues[0], &["--timeout", "60s", "-n", &middle.endpoint()]).await;

    let answer = first
        .client()
        .await
        .expect("client")
        .compute(request(0, &x))
        .await
        .expect("answer")
        .into_inner();

    assert_eq!(answer.status, StatusCode::Success as i32);
    assert_eq!(answer.exit_layer, 16);
    let layers: Vec<(u64, u64)> = answer.hops.iter().map(|h| (h.start_layer, h.exit_layer)).collect();
    assert_eq!(layers, vec![(0, 8), (8, 12), (12, 16)]);
    assert!(answer.hops.iter().all(|h| h.compute_us > 0));
    let result = result_tensors(&answer);
    assert!(result["category"].equal(&reference["category"]));
    assert!(
        result["probs"].allclose(&reference["probs"], 1e-5, 1e-6, false),
        "cascade == infer 0->16"
    );
}
