//! The engine's shadow lane: shadow work is never batched with ordinary
//! requests, is computed only when no ordinary request waits, and at most
//! [`MAX_SHADOW_WAITING`] wait (the oldest beyond them are dropped, not
//! computed).

mod support;

use dnet_model::engine::{Outcome, MAX_SHADOW_WAITING};
use support::{held_engine, image_job, PATIENCE};

/// Shadow jobs submitted while the model thread is held, before the ordinary ones.
const SHADOW: usize = MAX_SHADOW_WAITING + 4;
/// Ordinary jobs submitted after them.
const ORDINARY: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_work_waits_apart_after_ordinary_requests_and_at_most_sixteen_of_it() {
    let (engine, gate, release, computed) = held_engine().await;
    let mut shadow_outcomes = Vec::new();
    for _ in 0..SHADOW {
        let (mut job, outcome) = image_job();
        job.request.shadow = true;
        engine.submit(job).expect("the model thread runs");
        shadow_outcomes.push(outcome);
    }
    let mut ordinary_outcomes = vec![computed];
    for _ in 0..ORDINARY {
        let (job, outcome) = image_job();
        engine.submit(job).expect("the model thread runs");
        ordinary_outcomes.push(outcome);
    }

    drop(release);
    for outcome in ordinary_outcomes {
        let outcome = tokio::time::timeout(PATIENCE, outcome)
            .await
            .expect("in time")
            .expect("answered");
        assert!(matches!(outcome, Outcome::Reply(_)), "ordinary: {outcome:?}");
    }
    let mut settled = Vec::new();
    for outcome in shadow_outcomes {
        let outcome = tokio::time::timeout(PATIENCE, outcome)
            .await
            .expect("in time")
            .expect("settled");
        settled.push(matches!(outcome, Outcome::Reply(_)));
    }
    engine.join();

    // The oldest shadow jobs beyond the lane's size were dropped uncomputed.
    let dropped = SHADOW - MAX_SHADOW_WAITING;
    assert_eq!(
        settled,
        [vec![false; dropped], vec![true; MAX_SHADOW_WAITING]].concat(),
        "the {dropped} oldest shadow jobs dropped, the rest computed"
    );
    // After the held forward (one ordinary image): every ordinary request in
    // one forward of its own although the shadow work came first, then only
    // shadow forwards, of the 16 kept.
    let forwards = gate.forwards.lock().expect("gate").clone();
    assert_eq!(&forwards[..2], &[(1, false), (ORDINARY, false)], "{forwards:?}");
    assert!(forwards[2..].iter().all(|&(_, shadow)| shadow), "{forwards:?}");
    let shadow_samples: usize = forwards[2..].iter().map(|&(samples, _)| samples).sum();
    assert_eq!(shadow_samples, MAX_SHADOW_WAITING, "{forwards:?}");
}
