//! The direct unit (`computation-unit serve`): the transmission unit's gRPC
//! edge in front of its own engine, no broker; alone, in chains, and mixed
//! with broker units.

mod support;

use std::time::Duration;

use dnet_codec::XDtype;
use dnet_proto::{ComputationResponse, Data, QstatusRequest, StatusCode};
use dnet_testkit::{free_port, wait_for, Broker, TransmissionUnit};
use support::{images, infer, request, result_tensors, thresholds, MixedCascade};
use tonic::Code;

const SEED: u64 = 11;
/// How long a test waits for a state it needs before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

async fn direct(exit: u8, extra: &[&str]) -> TransmissionUnit {
    TransmissionUnit::direct(exit, SEED, extra)
        .await
        .expect("direct unit starts")
}

async fn call(
    unit: &TransmissionUnit,
    request: dnet_proto::ComputationRequest,
) -> Result<ComputationResponse, tonic::Status> {
    let mut client = unit.client().await.expect("client");
    client.compute(request).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_direct_and_broker_cascade_answers_what_infer_gives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let x = images(1, 3);
    let reference = infer(dir.path(), &x, SEED, 0, 16);
    let never = thresholds(1.0);
    let broker = Broker::local();
    // direct 0->8, then a broker unit 8->12, then direct 12->16.
    let cascade = MixedCascade::start(&broker, SEED, &never).await;
    let (first, middle, last) = (&cascade.first, &cascade.middle, &cascade.last);

    let answer = call(first, request(0, &x)).await.expect("answer");

    assert_eq!((answer.status, answer.exit_layer), (StatusCode::Success as i32, 16));
    let hops: Vec<(&str, u64, u64)> = answer
        .hops
        .iter()
        .map(|h| (h.unit.as_str(), h.start_layer, h.exit_layer))
        .collect();
    assert_eq!(
        hops,
        vec![
            (first.name.as_str(), 0, 8),
            (middle.name.as_str(), 8, 12),
            (last.name.as_str(), 12, 16)
        ]
    );
    assert!(
        answer.hops.iter().all(|h| h.compute_us > 0 && h.batch_size == 1),
        "{:?}",
        answer.hops
    );
    let result = result_tensors(&answer);
    assert!(result["category"].equal(&reference["category"]));
    assert!(
        result["probs"].allclose(&reference["probs"], 1e-5, 1e-6, false),
        "mixed cascade == infer 0->16"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_forward_passes_and_qstatus_reports_one_consumer() {
    let unit = direct(16, &["--timeout", "60s"]).await;
    let client = unit.client().await.expect("client");
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let mut client = client.clone();
            let request = request(0, &images(1, 40 + i));
            tokio::spawn(async move { client.compute(request).await })
        })
        .collect();
    let mut batch_sizes = Vec::new();
    for call in calls {
        let answer = call.await.expect("task").expect("answer").into_inner();
        assert_eq!(answer.status, StatusCode::Success as i32);
        batch_sizes.push(answer.hops[0].batch_size);
    }
    assert!(
        batch_sizes.iter().any(|&b| b > 1),
        "calls that waited together ran together: {batch_sizes:?}"
    );
    let metrics = unit.metrics().await.expect("metrics");
    let forwards = metrics.ordinary("dnet_batch_size_count").expect("batch sizes");
    assert!(forwards < 8.0, "8 calls in {forwards} forward passes");
    let status = unit
        .client()
        .await
        .expect("client")
        .qstatus(QstatusRequest {})
        .await
        .expect("qstatus")
        .into_inner();
    assert_eq!((status.qlength, status.consumer), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_cannot_finish_in_time_gets_deadline_exceeded_and_is_not_computed() {
    let unit = direct(16, &[]).await;
    // One call teaches the unit how long a forward takes.
    call(&unit, request(0, &images(4, 1))).await.expect("first answer");
    let computed = unit
        .metrics()
        .await
        .expect("metrics")
        .ordinary("dnet_batch_size_count")
        .expect("count");

    // 16 images take four times the first call's forward; the deadline is far
    // shorter than that but long enough that the unit, not the client's own
    // timer (which would say CANCELLED), answers first.
    let mut client = unit.client().await.expect("client");
    let mut short = tonic::Request::new(request(0, &images(16, 2)));
    short.set_timeout(Duration::from_millis(150));
    let refused = client.compute(short).await.expect_err("no time to compute");
    assert_eq!(refused.code(), Code::DeadlineExceeded, "{refused:?}");

    wait_for("the unit to count the expired call", PATIENCE, || async {
        let metrics = unit.metrics().await.ok()?;
        (metrics.sum("dnet_requests_total").ok()? >= 2.0).then_some(metrics)
    })
    .await
    .expect("counted");
    let metrics = unit.metrics().await.expect("metrics");
    assert_eq!(
        metrics.ordinary("dnet_batch_size_count").expect("count"),
        computed,
        "the late call was not computed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_unit_down_gives_unavailable() {
    let nowhere = format!("127.0.0.1:{}", free_port());
    let unit = direct(
        8,
        &["--thresholds", &thresholds(1.0), "-n", &nowhere, "--retry-budget", "0"],
    )
    .await;

    let refused = call(&unit, request(0, &images(1, 5)))
        .await
        .expect_err("next unit down");

    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains(&nowhere), "{}", refused.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_calls_in_flight_then_exits_zero() {
    // The grace this test relies on, stated: three forwards of 48 images on
    // one thread, on a machine that may be slow and busy with other tests.
    let mut unit = direct(
        16,
        &[
            "--timeout",
            "120s",
            "--shutdown-grace",
            "120s",
            "--max-batch-size",
            "48",
        ],
    )
    .await;
    let client = unit.client().await.expect("client");
    // Three forward passes long enough to stop in the middle of.
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let mut client = client.clone();
            let request = request(0, &images(48, 300 + i));
            tokio::spawn(async move { client.compute(request).await })
        })
        .collect();
    wait_for("three calls in flight", PATIENCE, || async {
        let in_flight = unit.metrics().await.ok()?.ordinary("dnet_in_flight").ok()?;
        (in_flight == 3.0).then_some(())
    })
    .await
    .expect("in flight");

    unit.process.signal("TERM").expect("SIGTERM");
    for call in calls {
        let answer = call.await.expect("task").expect("answered while draining").into_inner();
        assert_eq!(answer.status, StatusCode::Success as i32);
    }
    let exit = unit.process.wait_exit(PATIENCE).await.expect("exits");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_precision_on_the_wire_is_read_by_the_next_unit_with_the_same_answers() {
    let never = thresholds(1.0);
    let last = direct(16, &["--timeout", "60s"]).await;
    let x = images(3, 8);
    let mut answers = Vec::new();
    for (dtype, expected) in [("f32", XDtype::F32), ("f16", XDtype::F16), ("bf16", XDtype::BF16)] {
        let edge = direct(8, &["--thresholds", &never, "--wire-dtype", dtype]).await;
        let handed_on = call(&edge, request(0, &x)).await.expect("answer");
        let Some(Data::NextRequest(next)) = handed_on.data else {
            panic!("{dtype}: NOT_SUCCESS with a next request expected: {handed_on:?}")
        };
        let parsed = dnet_codec::parse_x(&next.x, 8, 3).expect("a valid x");
        assert_eq!(parsed.dtype, expected, "{dtype}");
        let answer = call(&last, next).await.expect("the next unit reads it");
        assert_eq!(answer.status, StatusCode::Success as i32, "{dtype}");
        answers.push(result_tensors(&answer));
    }
    let f32 = &answers[0];
    for half in &answers[1..] {
        assert!(half["category"].equal(&f32["category"]));
        assert!(half["probs"].allclose(&f32["probs"], 0.0, 1e-2, false));
    }
}
