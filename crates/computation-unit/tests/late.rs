//! Answers that beat the deadline (`--answer-when-late`): a cascade of
//! direct units whose first hands every sample on (thresholds 1), and whose
//! next unit cannot answer in time in each of the ways it can fail: down
//! (killed), refusing (`--max-in-flight 1`, its one slot held), stalled
//! (SIGSTOP), and with shadow work passing through a middle unit. With the
//! flag every call is answered in time from the unit before, marked
//! degraded (random weights' confidences are near 0.1: the floor is 0), and
//! none fails UNAVAILABLE or RESOURCE_EXHAUSTED; without it the errors pass
//! as before.
//!
//! Time budget: a late answer is due a tenth of the call's budget before its
//! deadline; the calls' 500 ms is the deadline users set, not a measure of
//! this machine's speed (exit 8 computes one image in tens of ms). Calls
//! that cannot be answered in time by the next unit fail at once (down,
//! refused) or at their deadline (stalled).

mod support;

use std::time::Duration;

use dnet_proto::{ComputationResponse, StatusCode};
use dnet_testkit::{flood, wait_for, TransmissionUnit};
use support::{images, request, thresholds};
use tonic::Code;

const SEED: u64 = 11;
/// The callers' deadline.
const DEADLINE: Duration = Duration::from_millis(500);
/// Calls per scenario.
const CALLS: u64 = 6;
/// How long the test waits for a unit's view of its next unit to change.
const PATIENCE: Duration = Duration::from_secs(30);

/// A unit of exit `exit` handing every sample on to `next`, with `flags`.
async fn handing_on(exit: u8, next: &TransmissionUnit, flags: &[&str]) -> TransmissionUnit {
    let (next, never) = (next.endpoint(), thresholds(1.0));
    let mut extra = vec!["-n", &next, "--thresholds", &never];
    extra.extend(flags);
    TransmissionUnit::direct(exit, SEED, &extra).await.expect("unit starts")
}

/// A call of image `seed` with `deadline`.
async fn call(unit: &TransmissionUnit, seed: u64, deadline: Duration) -> Result<ComputationResponse, tonic::Status> {
    let mut client = unit.client().await.expect("client");
    let mut call = tonic::Request::new(request(0, &images(1, seed)));
    call.set_timeout(deadline);
    client.compute(call).await.map(tonic::Response::into_inner)
}

/// Units 8 -> 16, warmed up: unit 16 has answered through unit 8.
async fn cascade(last_flags: &[&str], first_flags: &[&str]) -> (TransmissionUnit, TransmissionUnit) {
    let last = TransmissionUnit::direct(16, SEED, last_flags).await.expect("unit 16");
    let first = handing_on(8, &last, first_flags).await;
    for i in 0..2 {
        let answer = call(&first, i, Duration::from_secs(60))
            .await
            .expect("warm-up answered");
        assert_eq!((answer.exit_layer, answer.degraded), (16, false), "answered by unit 16");
    }
    (first, last)
}

/// Every one of [`CALLS`] calls answered in time from `exit`, marked degraded, and counted.
async fn all_answered_late(unit: &TransmissionUnit, exit: u64) {
    for i in 0..CALLS {
        let answer = call(unit, 100 + i, DEADLINE)
            .await
            .unwrap_or_else(|status| panic!("call {i}: answered in time, not {status:?}"));
        assert_eq!(
            (answer.status, answer.exit_layer, answer.degraded),
            (StatusCode::Success as i32, exit, true),
            "call {i}: answered from exit {exit}, marked degraded"
        );
    }
    let metrics = unit.metrics().await.expect("metrics");
    let late = metrics
        .labelled("dnet_late_answers_total", "exit", &exit.to_string())
        .expect("counted");
    assert_eq!(late, CALLS as f64, "one late sample per call");
}

/// Every one of [`CALLS`] calls failed with `code`.
async fn all_failed(unit: &TransmissionUnit, code: Code) {
    for i in 0..CALLS {
        let status = call(unit, 100 + i, DEADLINE).await.expect_err("not answered");
        assert_eq!(status.code(), code, "call {i}: {status:?}");
    }
}

/// Unit 16 killed, and unit 8 knowing it (its health watch ended).
async fn next_unit_down(first_flags: &[&str]) -> TransmissionUnit {
    let (first, mut last) = cascade(&[], first_flags).await;
    last.process.kill();
    wait_for("unit 8 to see unit 16 gone", PATIENCE, || async {
        let live = first.metrics().await.ok()?.value("dnet_next_addresses").ok()?;
        (live == 0.0).then_some(())
    })
    .await
    .expect("the health watch ends with the process");
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_flag_a_next_unit_down_gets_degraded_answers_not_unavailable() {
    let first = next_unit_down(&["--answer-when-late"]).await;
    all_answered_late(&first, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_a_next_unit_down_means_unavailable() {
    let first = next_unit_down(&[]).await;
    all_failed(&first, Code::Unavailable).await;
}

/// Unit 16 with one call slot, held by a call that never sends its body:
/// every forward is refused RESOURCE_EXHAUSTED.
async fn next_unit_refusing(first_flags: &[&str]) -> (TransmissionUnit, TransmissionUnit, flood::HeldSlot) {
    let (first, last) = cascade(&["--max-in-flight", "1"], first_flags).await;
    let held = flood::hold_slot(last.address, Duration::from_secs(120))
        .await
        .expect("a call holds unit 16's one slot");
    // The slot is taken as the held call's headers arrive (its handler,
    // which waits for the message, does not count it in flight yet).
    wait_for("unit 16 to refuse calls", PATIENCE, || async {
        let refused = call(&last, 0, Duration::from_secs(10)).await.err()?;
        (refused.code() == Code::ResourceExhausted).then_some(())
    })
    .await
    .expect("the held call takes the one slot");
    (first, last, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_flag_a_next_unit_refusing_gets_degraded_answers_not_resource_exhausted() {
    let (first, last, _held) = next_unit_refusing(&["--answer-when-late"]).await;
    all_answered_late(&first, 8).await;
    let refused = last.metrics().await.expect("metrics");
    assert!(
        refused
            .labelled("dnet_requests_total", "status", "ResourceExhausted")
            .expect("counted")
            >= CALLS as f64,
        "unit 16 refused the forwards"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_a_next_unit_refusing_means_resource_exhausted() {
    let (first, _last, _held) = next_unit_refusing(&[]).await;
    all_failed(&first, Code::ResourceExhausted).await;
}

/// Unit 8 also measures its agreement (`--shadow-rate 1`): the samples it
/// hands on count with the answer that comes back, but not with the answer
/// it gave late itself, which says nothing of the last exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_flag_a_stalled_next_unit_gets_degraded_answers_in_time() {
    let (first, last) = cascade(&[], &["--answer-when-late", "--shadow-rate", "1"]).await;
    let window = || async {
        let metrics = first.metrics().await.expect("metrics");
        metrics.labelled("dnet_live_window", "exit", "8").expect("gauge")
    };
    assert_eq!(window().await, 2.0, "the warm-up calls' samples, answered by unit 16");
    last.process.signal("STOP").expect("SIGSTOP");
    all_answered_late(&first, 8).await;
    assert_eq!(window().await, 2.0, "no outcome from an answer given late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_a_stalled_next_unit_means_deadline_exceeded() {
    let (first, last) = cascade(&[], &[]).await;
    last.process.signal("STOP").expect("SIGSTOP");
    all_failed(&first, Code::DeadlineExceeded).await;
}

/// Random weights answer with confidences near 0.1: under a floor of 0.5
/// the unit does not answer from here, and the caller's deadline passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_floor_a_stalled_next_unit_still_means_deadline_exceeded() {
    let (first, last) = cascade(&[], &["--answer-when-late", "--answer-floor", "0.5"]).await;
    last.process.signal("STOP").expect("SIGSTOP");
    let status = call(&first, 100, DEADLINE).await.expect_err("no answer in time");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let metrics = first.metrics().await.expect("metrics");
    assert_eq!(
        metrics.labelled("dnet_late_answers_total", "exit", "8").unwrap_or(0.0),
        0.0,
        "none answered late"
    );
}

/// Shadow work and ordinary calls through one middle unit (8 -> 12 -> 16:
/// unit 8 answers every sample and sends each on as shadow work; the test
/// calls unit 12 too). Shadow forwards are not what callers wait for: they
/// stay out of unit 12's forward time and its late-answer estimate, and are
/// never answered late, also while unit 16 is stalled and the ordinary
/// calls are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_work_through_a_middle_unit_is_never_answered_late_nor_counted_as_a_forward() {
    let last = TransmissionUnit::direct(16, SEED, &[]).await.expect("unit 16");
    let middle = handing_on(12, &last, &["--answer-when-late"]).await;
    let (next, always) = (middle.endpoint(), thresholds(0.0));
    let first = TransmissionUnit::direct(8, SEED, &["-n", &next, "--thresholds", &always, "--shadow-rate", "1"])
        .await
        .expect("unit 8");
    let shadow_outcomes = |outcomes: &'static [&'static str]| {
        let first = &first;
        async move {
            let metrics = first.metrics().await.ok()?;
            Some(
                outcomes
                    .iter()
                    .map(|o| metrics.labelled("dnet_shadow_total", "outcome", o).unwrap_or(0.0))
                    .sum::<f64>(),
            )
        }
    };

    // Only the header marks shadow work: a body that says so is an ordinary
    // call (answered early, counted ordinary), not one that skips "refused first".
    let mut client = first.client().await.expect("client");
    let mut claimed = request(0, &images(1, 99));
    claimed.shadow = true;
    let answer = client.compute(claimed).await.expect("answered").into_inner();
    assert_eq!(
        (answer.status, answer.exit_layer),
        (StatusCode::Success as i32, 8),
        "answered at exit 8, as an ordinary call"
    );
    let counted = first.metrics().await.expect("metrics");
    assert_eq!(
        counted
            .labelled("dnet_requests_total", "traffic", "shadow")
            .expect("counted"),
        0.0
    );
    wait_for("the claimed call's own shadow sample back", PATIENCE, || async {
        (shadow_outcomes(&["agreed", "disagreed"]).await? == 1.0).then_some(())
    })
    .await
    .expect("an ordinary call's sample, sent on as shadow work");

    // Healthy: shadow work comes back from unit 16; ordinary calls to unit 12 are answered there.
    for i in 0..CALLS {
        let answer = call(&first, i, Duration::from_secs(60)).await.expect("answered at 8");
        assert_eq!(answer.exit_layer, 8);
        let answer = call(&middle, 50 + i, Duration::from_secs(60)).await.expect("answered");
        assert_eq!((answer.exit_layer, answer.degraded), (16, false));
    }
    wait_for("every shadow sample back from unit 16", PATIENCE, || async {
        (shadow_outcomes(&["agreed", "disagreed"]).await? == CALLS as f64 + 1.0).then_some(())
    })
    .await
    .expect("shadow work answered by the last exit");
    let metrics = middle.metrics().await.expect("metrics");
    assert_eq!(
        metrics
            .labelled("dnet_requests_total", "traffic", "shadow")
            .expect("counted"),
        CALLS as f64 + 1.0,
        "the shadow calls, labelled"
    );
    assert_eq!(
        metrics.value("dnet_forward_seconds_count").expect("forwards"),
        CALLS as f64,
        "only the ordinary calls' forwards are timed"
    );

    // Stalled: ordinary calls are answered late at 12; shadow work is not.
    last.process.signal("STOP").expect("SIGSTOP");
    all_answered_late(&middle, 12).await;
    for i in 0..CALLS {
        call(&first, 200 + i, Duration::from_secs(60))
            .await
            .expect("answered at 8");
    }
    wait_for("the shadow work sent during the stall to end", PATIENCE, || async {
        (shadow_outcomes(&["agreed", "disagreed", "dropped", "failed"]).await? == 2.0 * CALLS as f64 + 1.0)
            .then_some(())
    })
    .await
    .expect("shadow work ends within its own budget");
    assert_eq!(
        shadow_outcomes(&["agreed", "disagreed"]).await,
        Some(CALLS as f64 + 1.0),
        "no agreement was measured from an answer given late at unit 12"
    );
    let late = middle.metrics().await.expect("metrics");
    assert_eq!(
        late.labelled("dnet_late_answers_total", "exit", "12").expect("counted"),
        CALLS as f64,
        "only the ordinary calls were answered late"
    );
}
