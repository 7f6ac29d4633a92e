//! The direct unit (`computation-unit serve`): the transmission unit's gRPC
//! edge in front of its own engine, no broker; alone, in chains, and mixed
//! with broker units.

mod support;

use std::time::Duration;

use dnet_codec::XDtype;
use dnet_model::codec;
use dnet_proto::{ComputationResponse, Data, QstatusRequest, StatusCode};
use dnet_testkit::{free_port, wait_for, Broker, TransmissionUnit};
use support::{images, infer, infer_weights, request, result_tensors, thresholds, MixedCascade};
use tch::{Kind, Tensor};
use test_unit::inputs::Inputs;
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
    let metrics = unit.metrics().await.expect("metrics");
    let computed = (
        metrics.ordinary("dnet_batch_size_count").expect("count"),
        metrics.ordinary("dnet_batch_size_sum").expect("sum"),
    );

    // 48 images take twelve times the first call's forward (about a second
    // on one CPU thread); the deadline is far shorter than that but long
    // enough that the unit, not the client's own timer (which would say
    // CANCELLED), answers first.
    let mut client = unit.client().await.expect("client");
    let mut short = tonic::Request::new(request(0, &images(48, 2)));
    short.set_timeout(Duration::from_millis(150));
    let refused = client.compute(short).await.expect_err("no time to compute");
    assert_eq!(refused.code(), Code::DeadlineExceeded, "{refused:?}");

    // The model thread works in order: once a call sent after the refusal
    // is answered, a forward wrongly started for the late call has ended
    // and been counted.
    let after = call(&unit, request(0, &images(1, 3)))
        .await
        .expect("the next call's answer");
    assert_eq!(after.status, StatusCode::Success as i32);
    let metrics = unit.metrics().await.expect("metrics");
    assert_eq!(
        (
            metrics.ordinary("dnet_batch_size_count").expect("count"),
            metrics.ordinary("dnet_batch_size_sum").expect("sum"),
        ),
        (computed.0 + 1.0, computed.1 + 1.0),
        "one more forward, of the next call's one image: the late call was not computed"
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

/// Largest relative difference, max |got - want| / max |want| (as
/// `dnet-model`'s fidelity test measures it).
fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size());
    let scale = want.abs().max().double_value(&[]).max(f64::MIN_POSITIVE);
    (got - want).abs().max().double_value(&[]) / scale
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_precision_on_the_wire_is_read_by_the_next_unit_with_the_same_answers() {
    // The trained heads, so that categories and confidences vary with the
    // input, on 24 digits of the test set.
    let model = dnet_testkit::trained::heads_only();
    let x = Inputs::dataset(&model.test_set)
        .expect("the test set")
        .request(0, 24)
        .image;
    let weights = ["--weights", model.weights_arg(), "--timeout", "60s"];
    let never = thresholds(1.0);
    let last = direct(16, &weights).await;
    let reference = infer_weights(&model.weights, &x, 0, 16);
    let mut runs = Vec::new();
    for (dtype, expected, tolerance) in [
        ("f32", XDtype::F32, 0.0),
        ("f16", XDtype::F16, 1e-3),
        ("bf16", XDtype::BF16, 1e-2),
    ] {
        let edge = direct(
            8,
            &[&weights[..], &["--thresholds", &never, "--wire-dtype", dtype]].concat(),
        )
        .await;
        let handed_on = call(&edge, request(0, &x)).await.expect("answer");
        let Some(Data::NextRequest(next)) = handed_on.data.clone() else {
            panic!("{dtype}: NOT_SUCCESS with a next request expected: {handed_on:?}")
        };
        let parsed = dnet_codec::parse_x(&next.x, 8, 24).expect("a valid x");
        assert_eq!(parsed.dtype, expected, "{dtype}");
        let tensor = codec::decode_x(&next.x, 8, 24).expect("decodes").to_kind(Kind::Float);
        let answer = call(&last, next).await.expect("the next unit reads it");
        assert_eq!(answer.status, StatusCode::Success as i32, "{dtype}");
        runs.push((dtype, tolerance, tensor, result_tensors(&answer)));
    }
    let (_, _, f32_x, f32_answer) = &runs[0];
    // Sanity of the inputs: the answers differ between images.
    let categories = f32_answer["category"].unique_dim(0, false, false, false).0.size()[0];
    assert!(categories >= 5, "24 digits in {categories} categories");
    assert!(
        relative_error(&f32_answer["probs"].log(), &reference["probs"].log()) <= 1e-5,
        "f32 on the wire is the model in one process"
    );
    for (dtype, tolerance, x, answer) in &runs[1..] {
        let error = relative_error(x, f32_x);
        assert!(
            error <= *tolerance,
            "{dtype} handed-on tensor: relative error {error:e} > {tolerance:e}"
        );
        // Log-probabilities are the exit scores less a per-sample constant.
        let error = relative_error(&answer["probs"].log(), &f32_answer["probs"].log());
        assert!(
            error <= 10.0 * tolerance,
            "{dtype} log-probabilities: relative error {error:e}"
        );
        let same = answer["category"]
            .eq_tensor(&f32_answer["category"])
            .sum(Kind::Int64)
            .int64_value(&[]);
        assert!(same >= 23, "{dtype}: {same} of 24 categories as f32's");
    }
}
