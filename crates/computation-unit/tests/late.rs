//! Answers that beat the deadline (`--answer-when-late`): a cascade of
//! direct units 8 -> 16 whose unit 16 stops (SIGSTOP) after warm-up traffic.
//! With the flag, calls with a 500 ms deadline get degraded answers from
//! exit 8 in time; without it, they end DEADLINE_EXCEEDED.
//!
//! Time budget: a late answer is given a tenth of the call's budget (50 ms)
//! before its deadline; the calls' 500 ms is the deadline users set, not a
//! measure of this machine's speed (exit 8 computes one image in tens of ms).

mod support;

use std::time::Duration;

use dnet_proto::{ComputationResponse, StatusCode};
use dnet_testkit::TransmissionUnit;
use support::{images, request, thresholds};
use tonic::Code;

const SEED: u64 = 11;
/// The callers' deadline.
const DEADLINE: Duration = Duration::from_millis(500);

/// Units 8 -> 16; unit 8 hands everything on (thresholds 1) and has
/// `flags` (`--answer-when-late`, `--answer-floor`). After warm-up calls
/// that unit 16 answers, unit 16 is stopped.
async fn stalled_cascade(flags: &[&str]) -> (TransmissionUnit, TransmissionUnit) {
    let last = TransmissionUnit::direct(16, SEED, &[]).await.expect("unit 16");
    let (next, never) = (last.endpoint(), thresholds(1.0));
    let mut extra = vec!["-n", &next, "--thresholds", &never];
    extra.extend(flags);
    let first = TransmissionUnit::direct(8, SEED, &extra).await.expect("unit 8");
    for i in 0..5 {
        let answer = call(&first, i, Duration::from_secs(60))
            .await
            .expect("warm-up answered");
        assert_eq!((answer.exit_layer, answer.degraded), (16, false), "answered by unit 16");
    }
    last.process.signal("STOP").expect("SIGSTOP");
    (first, last)
}

/// A call of image `seed` with `deadline`.
async fn call(unit: &TransmissionUnit, seed: u64, deadline: Duration) -> Result<ComputationResponse, tonic::Status> {
    let mut client = unit.client().await.expect("client");
    let mut call = tonic::Request::new(request(0, &images(1, seed)));
    call.set_timeout(deadline);
    client.compute(call).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_flag_a_stalled_next_unit_gets_degraded_answers_from_exit_8_in_time() {
    let (first, _last) = stalled_cascade(&["--answer-when-late"]).await;
    for i in 0..4 {
        let answer = call(&first, 100 + i, DEADLINE)
            .await
            .unwrap_or_else(|status| panic!("call {i}: answered in time, not {status:?}"));
        assert_eq!(
            (answer.status, answer.exit_layer, answer.degraded),
            (StatusCode::Success as i32, 8, true),
            "call {i}: answered from exit 8, marked degraded"
        );
        assert!(answer.confidence > 0.0);
    }
    let metrics = first.metrics().await.expect("metrics");
    assert_eq!(
        metrics
            .labelled("dnet_late_answers_total", "exit", "8")
            .expect("counted"),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_a_stalled_next_unit_means_deadline_exceeded() {
    let (first, _last) = stalled_cascade(&[]).await;
    for i in 0..2 {
        let status = call(&first, 100 + i, DEADLINE).await.expect_err("no answer in time");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }
}

/// Random weights answer with confidences near 0.1: under a floor of 0.5
/// the unit does not answer from here, and the caller's deadline passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_floor_a_stalled_next_unit_still_means_deadline_exceeded() {
    let (first, _last) = stalled_cascade(&["--answer-when-late", "--answer-floor", "0.5"]).await;
    let status = call(&first, 100, DEADLINE).await.expect_err("no answer in time");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let metrics = first.metrics().await.expect("metrics");
    assert!(
        metrics.labelled("dnet_late_answers_total", "exit", "8").is_err(),
        "none answered late"
    );
}
