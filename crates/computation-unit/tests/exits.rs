//! Where a request exits: each sample of a batch on its own (the default
//! exit rule) or the whole request, thresholds a request carries, and
//! thresholds changed while a unit runs.

mod support;

use std::time::Duration;

use dnet_proto::{ComputationRequest, ComputationResponse, Data, StatusCode};
use dnet_testkit::{wait_for, Broker, TransmissionUnit};
use support::{images, infer, request, result_tensors, thresholds, MixedCascade};
use tch::Tensor;

const SEED: u64 = 5;
/// How long a test waits for a state it needs before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// Every unit here gives its calls 60 s (the default deadline is 30 s):
/// computing a few images takes well under a second, even on a busy machine.
async fn direct(exit: u8, extra: &[&str]) -> TransmissionUnit {
    let extra = [&["--timeout", "60s"][..], extra].concat();
    TransmissionUnit::direct(exit, SEED, &extra)
        .await
        .expect("direct unit starts")
}

async fn call(unit: &TransmissionUnit, request: ComputationRequest) -> ComputationResponse {
    let mut client = unit.client().await.expect("client");
    client.compute(request).await.expect("answered").into_inner()
}

/// Per-sample confidences (largest probability) of `infer`'s output.
fn confidences(output: &std::collections::HashMap<String, Tensor>) -> Vec<f32> {
    Vec::<f32>::try_from(&output["confidence"]).expect("f32")
}

/// A threshold exactly `k` of `values` reach: halfway between the `k`-th
/// largest and the next (away from both, so that batching's rounding
/// differences cannot move a sample across it).
fn kth_largest(values: &[f32], k: usize) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    (f64::from(sorted[k - 1]) + f64::from(sorted[k])) / 2.0
}

/// The 15 thresholds, `at` (exit, threshold) pairs set, the rest 1.0.
fn thresholds_with(at: &[(usize, f64)]) -> String {
    let mut values = [1.0; 15];
    for &(exit, threshold) in at {
        values[exit - 1] = threshold;
    }
    values.iter().map(f64::to_string).collect::<Vec<_>>().join(",")
}

fn exit_layers(answer: &ComputationResponse) -> Vec<i64> {
    Vec::<i64>::try_from(&result_tensors(answer)["exit_layer"]).expect("i64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_sample_at_its_own_exit_in_order_as_one_by_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let x = images(8, 21);
    // Thresholds from infer's confidences: 3 samples reach exit 8's, and 2 of
    // the other 5 reach exit 12's; 3 go on to 16.
    let at_8 = confidences(&infer(dir.path(), &x, SEED, 0, 8));
    let t8 = kth_largest(&at_8, 3);
    let at_12 = confidences(&infer(dir.path(), &x, SEED, 0, 12));
    let rest_12: Vec<f32> = (0..8).filter(|&i| f64::from(at_8[i]) < t8).map(|i| at_12[i]).collect();
    let t12 = kth_largest(&rest_12, 2);
    let chosen = thresholds_with(&[(8, t8), (12, t12)]);

    // direct 0->8, broker 8->12, direct 12->16: both layouts merge answers.
    let broker = Broker::local();
    let cascade = MixedCascade::start(&broker, SEED, &chosen).await;
    let first = &cascade.first;

    let batch = call(first, request(0, &x)).await;
    assert_eq!(batch.status, StatusCode::Success as i32, "{:?}", batch.data);
    let exits = exit_layers(&batch);
    let count = |e: i64| exits.iter().filter(|&&x| x == e).count();
    assert_eq!((count(8), count(12), count(16)), (3, 2, 3), "exits {exits:?}");
    assert_eq!(batch.exit_layer, 16, "the deepest exit that answered");
    let hops: Vec<(u64, u64)> = batch.hops.iter().map(|h| (h.start_layer, h.exit_layer)).collect();
    assert_eq!(hops, vec![(0, 8), (8, 12), (12, 16)]);
    let result = result_tensors(&batch);

    for i in 0..8_i64 {
        let alone = call(first, request(0, &x.narrow(0, i, 1))).await;
        assert_eq!(alone.status, StatusCode::Success as i32);
        let row = result_tensors(&alone);
        let at = usize::try_from(i).expect("index");
        assert_eq!(exit_layers(&alone), vec![exits[at]], "sample {i}: same exit");
        assert_eq!(alone.exit_layer, u64::try_from(exits[at]).expect("exit"));
        assert!(
            row["category"].equal(&result["category"].narrow(0, i, 1)),
            "sample {i}: same category"
        );
        assert!(
            row["probs"].allclose(&result["probs"].narrow(0, i, 1), 1e-5, 1e-6, false),
            "sample {i}: same probabilities"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_request_rule_hands_on_every_sample_unless_all_are_confident() {
    let dir = tempfile::tempdir().expect("temp dir");
    let x = images(4, 22);
    let t8 = kth_largest(&confidences(&infer(dir.path(), &x, SEED, 0, 8)), 2);
    let chosen = thresholds_with(&[(8, t8)]);
    let last = direct(16, &[]).await;
    let per_sample = direct(8, &["--thresholds", &chosen, "-n", &last.endpoint()]).await;
    let whole = direct(
        8,
        &[
            "--thresholds",
            &chosen,
            "--exit-rule",
            "whole-request",
            "-n",
            &last.endpoint(),
        ],
    )
    .await;

    let mut split = exit_layers(&call(&per_sample, request(0, &x)).await);
    split.sort_unstable();
    assert_eq!(split, vec![8, 8, 16, 16]);
    assert_eq!(exit_layers(&call(&whole, request(0, &x)).await), vec![16; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_in_a_request_go_on_with_it_within_each_units_bounds() {
    let never = thresholds(1.0);
    // 4 -> 8 -> 16; units 4 and 8 never exit by their own thresholds. Any
    // sample's largest probability is at least 0.1, so 0.1 always exits.
    let last = direct(16, &[]).await;
    let eight = direct(
        8,
        &[
            "--thresholds",
            &never,
            "--allow-threshold-override",
            "0.1..1",
            "-n",
            &last.endpoint(),
        ],
    )
    .await;
    let four = direct(
        4,
        &[
            "--thresholds",
            &never,
            "--allow-threshold-override",
            "0.5..1",
            "-n",
            &eight.endpoint(),
        ],
    )
    .await;
    let x = images(1, 23);
    let with = |values: &str| ComputationRequest {
        thresholds: values.split(',').map(|v| v.parse().expect("number")).collect(),
        ..request(0, &x)
    };

    let own = call(&four, request(0, &x)).await;
    assert_eq!((own.status, own.exit_layer), (StatusCode::Success as i32, 16));

    let overridden = call(&four, with(&thresholds_with(&[(4, 1.0), (8, 0.1)]))).await;
    assert_eq!(
        (overridden.status, overridden.exit_layer),
        (StatusCode::Success as i32, 8),
        "exit 8 used the request's threshold, carried on from unit 4"
    );
    assert_eq!(overridden.hops.len(), 2);

    let refused = call(&four, with(&thresholds_with(&[(4, 1.0), (8, 0.05)]))).await;
    assert_eq!(refused.status, StatusCode::Error as i32);
    let Some(Data::ErrorMessage(message)) = &refused.data else {
        panic!("no message: {refused:?}")
    };
    assert!(
        message.contains("0.05 for exit 8") && message.contains("0.1..1"),
        "{message}"
    );

    let no_flag = direct(8, &["--thresholds", &never]).await;
    let refused = call(&no_flag, with(&thresholds_with(&[(8, 0.5)]))).await;
    let Some(Data::ErrorMessage(message)) = &refused.data else {
        panic!("no message: {refused:?}")
    };
    assert!(message.contains("--allow-threshold-override"), "{message}");
    let too_few = call(&eight, with("0.5,0.5")).await;
    assert_eq!(too_few.status, StatusCode::Error as i32, "{too_few:?}");
}

/// Units 8 -> 16, unit 8 reading its thresholds from a file that holds
/// `content` (with `extra` flags); the file's folder, the file, and the units.
async fn reading_a_thresholds_file(
    content: &str,
    extra: &[&str],
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    TransmissionUnit,
    TransmissionUnit,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("thresholds");
    std::fs::write(&file, content).expect("write");
    let last = direct(16, &[]).await;
    let next = last.endpoint();
    let mut flags = vec!["--thresholds-file", file.to_str().expect("utf-8"), "-n", &next];
    flags.extend(extra);
    let unit = direct(8, &flags).await;
    (dir, file, last, unit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_thresholds_file_applies_while_the_unit_runs() {
    let (_dir, file, _last, unit) =
        reading_a_thresholds_file(&format!("# never exit at 8\n{}\n", thresholds(1.0)), &[]).await;
    let x = images(1, 24);
    let threshold = || async { unit.metrics().await.expect("metrics").value("dnet_exit_threshold") };
    assert_eq!(threshold().await.expect("gauge"), 1.0);
    assert_eq!(call(&unit, request(0, &x)).await.exit_layer, 16);

    std::fs::write(&file, thresholds(0.1)).expect("write");
    wait_for("the unit to read the new file", PATIENCE, || async {
        threshold().await.ok().filter(|t| (t - 0.1).abs() < 1e-9)
    })
    .await
    .expect("the unit reads the new file");
    assert_eq!(call(&unit, request(0, &x)).await.exit_layer, 8);

    std::fs::write(&file, "0.5,0.5").expect("write");
    let refused = || async {
        let metrics = unit.metrics().await.expect("metrics");
        metrics.labelled("dnet_threshold_changes_total", "outcome", "refused")
    };
    wait_for("the invalid file to be refused", PATIENCE, || async {
        refused().await.ok().filter(|&n| n == 1.0)
    })
    .await
    .expect("the invalid file is seen and refused");
    let metrics = unit.metrics().await.expect("metrics");
    assert_eq!(
        metrics
            .labelled("dnet_threshold_changes_total", "outcome", "applied")
            .expect("counter"),
        1.0
    );
    assert_eq!(
        call(&unit, request(0, &x)).await.exit_layer,
        8,
        "the thresholds in use stay"
    );
}

/// One source per exit: with `--target-agreement` the edge holds exit 8's
/// threshold; the file says where it starts, and a later change of its
/// entry is not applied (logged, counted `held`), while the gauge stays the
/// edge's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thresholds_file_does_not_move_a_threshold_the_live_calibration_holds() {
    let live = [
        "--shadow-rate",
        "0.5",
        "--target-agreement",
        "0.9",
        "--threshold-range",
        "0.05..0.9999",
    ];
    let (_dir, file, _last, unit) = reading_a_thresholds_file(&thresholds(0.3), &live).await;
    let threshold = || async { unit.metrics().await.expect("metrics").value("dnet_exit_threshold") };
    assert_eq!(threshold().await.expect("gauge"), 0.3, "it starts where the file says");

    std::fs::write(&file, thresholds(0.7)).expect("write");
    let held = wait_for("the change to be seen", PATIENCE, || async {
        let metrics = unit.metrics().await.ok()?;
        let held = metrics
            .labelled("dnet_threshold_changes_total", "outcome", "held")
            .ok()?;
        (held == 1.0).then_some(metrics)
    })
    .await
    .expect("the changed entry is counted as held");
    assert_eq!(
        held.value("dnet_exit_threshold").expect("gauge"),
        0.3,
        "still the edge's"
    );
    assert_eq!(
        held.labelled("dnet_threshold_changes_total", "outcome", "applied")
            .expect("counter"),
        1.0,
        "the other exits' entries changed and were applied"
    );
    assert!(
        !unit
            .process
            .events(
                "thresholds file changed for this exit, not applied to it: --target-agreement holds its threshold \
                 (the other exits' entries are applied)"
            )
            .is_empty(),
        "and it says so"
    );
}
