//! What a unit does when another fails, and what it does not do: answer
//! at once when the rest of the chain is down, never send again a request
//! that may have killed the next unit, send nothing to a unit that is not
//! serving or still loading; and a worker that lost its broker session,
//! or gave a request back while the queue refused copies, is not counted
//! as a death; a direct unit that stops computes nothing for calls it gave up.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use dnet_proto::StatusCode;
use dnet_testkit::{free_port, wait_for, Broker, ComputationUnit, TestQueue, TransmissionUnit};
use support::{images, request, thresholds};
use tonic::Code;

const SEED: u64 = 11;
/// How long a test waits for a state it needs before it fails.
const PATIENCE: Duration = Duration::from_secs(90);

async fn direct(exit: u8, extra: &[&str]) -> TransmissionUnit {
    TransmissionUnit::direct(exit, SEED, extra)
        .await
        .expect("direct unit starts")
}

/// The retries a unit made to its next unit (0 when it never retried).
async fn next_retries(unit: &TransmissionUnit) -> f64 {
    let metrics = unit.metrics().await.expect("metrics");
    metrics.labelled("dnet_retries_total", "target", "next").unwrap_or(0.0)
}

/// Waits until `unit` calls `count` serving addresses of its next unit.
async fn wait_for_next_addresses(unit: &TransmissionUnit, count: f64) {
    wait_for(&format!("{count} serving next addresses"), PATIENCE, || async {
        let live = unit.metrics().await.ok()?.value("dnet_next_addresses").ok()?;
        (live == count).then_some(())
    })
    .await
    .expect("next addresses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_whose_last_unit_is_down_answers_unavailable_naming_it_at_once() {
    let never = thresholds(1.0);
    let down = format!("127.0.0.1:{}", free_port());
    let second = direct(8, &["--thresholds", &never, "-n", &down, "--timeout", "30s"]).await;
    let first = direct(
        4,
        &["--thresholds", &never, "-n", &second.endpoint(), "--timeout", "30s"],
    )
    .await;
    wait_for_next_addresses(&first, 1.0).await;

    let mut call = tonic::Request::new(request(0, &images(1, 1)));
    call.set_timeout(Duration::from_secs(30));
    let started = Instant::now();
    let status = first
        .client()
        .await
        .expect("client")
        .compute(call)
        .await
        .expect_err("the last unit is down");
    let waited = started.elapsed();

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&down),
        "names the unit that is down: {status:?}"
    );
    // Retries are on (the default); none was made: the second unit knew its
    // next one was down, and the first does not send again what the second
    // answered. Before, both retried until the caller's 30 s deadline.
    assert_eq!((next_retries(&first).await, next_retries(&second).await), (0.0, 0.0));
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}, deadline 30 s"
    );
}

/// A direct unit of exit 16 on `port` that dies of every request handed on
/// from exit 8 (the test trigger of a request that kills its unit).
async fn fragile(port: u16) -> TransmissionUnit {
    let listen = format!("127.0.0.1:{port}");
    direct(16, &["-l", &listen, "--test-exit-on-start-layer", "8"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_kills_the_next_unit_reaches_it_at_most_max_attempts_times() {
    let ports = [free_port(), free_port()];
    let mut replicas = vec![fragile(ports[0]).await, fragile(ports[1]).await];
    let next = ports.map(|port| format!("127.0.0.1:{port}")).join(",");
    let first = direct(8, &["--thresholds", &thresholds(1.0), "-n", &next, "--timeout", "60s"]).await;
    wait_for_next_addresses(&first, 2.0).await;

    let mut call = tonic::Request::new(request(0, &images(1, 2)));
    call.set_timeout(Duration::from_secs(60));
    let mut client = first.client().await.expect("client");
    let calling = tokio::spawn(async move { client.compute(call).await });
    // Replicas that die are started again, as an orchestrator would, until
    // the call has its answer.
    let mut deaths = 0;
    while !calling.is_finished() {
        for (replica, port) in replicas.iter_mut().zip(ports) {
            if replica.process.exited().is_some() {
                deaths += 1;
                *replica = fragile(port).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = calling.await.expect("task").expect_err("the next unit died of it");
    for replica in &mut replicas {
        deaths += usize::from(replica.process.exited().is_some());
    }

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("not retried"), "{status:?}");
    // --max-attempts is 3; a call that broke after it was sent is not sent again.
    assert_eq!(deaths, 1, "the request reached a next unit {deaths} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_unit_not_serving_or_still_loading_gets_no_calls() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let serving = direct(16, &["--timeout", "60s"]).await;
    // A transmission unit without its broker: it accepts connections, its
    // health says NOT_SERVING.
    let nowhere = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let brokerless = TransmissionUnit::launch(&broker, queue.name(), &["-a", &nowhere])
        .await
        .expect("starts without a broker");
    // A direct unit whose weights never finish loading (a named pipe nobody writes).
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = dir.path().join("weights.safetensors");
    let made = Command::new("mkfifo").arg(&weights).status().expect("mkfifo");
    assert!(made.success());
    let weights = weights.display().to_string();
    let loading = TransmissionUnit::launch_direct(16, SEED, &["--weights", &weights])
        .await
        .expect("serves while loading");

    let next = [&serving, &brokerless, &loading]
        .map(TransmissionUnit::endpoint)
        .join(",");
    let first = direct(8, &["--thresholds", &thresholds(1.0), "-n", &next, "--timeout", "60s"]).await;
    wait_for_next_addresses(&first, 1.0).await;
    let client = first.client().await.expect("client");
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let (mut client, request) = (client.clone(), request(0, &images(1, 100 + i)));
            tokio::spawn(async move { client.compute(request).await })
        })
        .collect();
    for call in calls {
        let answer = call.await.expect("task").expect("answered").into_inner();
        assert_eq!(answer.status, StatusCode::Success as i32);
    }
    for (name, unit) in [("not serving", &brokerless), ("loading", &loading)] {
        let calls = unit
            .metrics()
            .await
            .expect("metrics")
            .sum("dnet_requests_total")
            .unwrap_or(0.0);
        assert_eq!(calls, 0.0, "the {name} unit got calls");
    }
    assert_eq!(
        serving
            .metrics()
            .await
            .expect("metrics")
            .sum("dnet_requests_total")
            .expect("calls"),
        12.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_returned_by_a_broker_blip_is_not_counted_as_a_death() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = TransmissionUnit::start(&broker, queue.name(), &["--timeout", "60s"])
        .await
        .expect("unit starts");
    let name = format!("blip-{}", std::process::id());
    // --max-attempts 1: one death is enough to refuse a request as poison.
    let worker = ComputationUnit::start(
        &broker,
        queue.name(),
        16,
        SEED,
        &["--max-attempts", "1", "--prefetch", "1", "--unit-name", &name],
    )
    .await
    .expect("worker starts");

    // The worker holds the request (stopped, it cannot answer) when the
    // broker closes its connection: a blip. The broker puts the request
    // back, marked redelivered; the worker lives and reconnects.
    worker.process.signal("STOP").expect("SIGSTOP");
    let mut client = unit.client().await.expect("client");
    let calling = tokio::spawn(async move { client.compute(request(0, &images(1, 9))).await });
    wait_for("the stopped worker to hold the request", PATIENCE, || async {
        (broker.queue_counts(queue.name()).ok()?? == (0, 1, 1)).then_some(())
    })
    .await
    .expect("held");
    broker
        .close_connection(&format!("computation-unit {name}"))
        .expect("connection closed");
    wait_for("the broker to put the request back", PATIENCE, || async {
        (broker.queue_counts(queue.name()).ok()??.0 == 1).then_some(())
    })
    .await
    .expect("requeued");
    worker.process.signal("CONT").expect("SIGCONT");

    let answer = calling.await.expect("task").expect("answered").into_inner();
    assert_eq!(answer.status, StatusCode::Success as i32, "{:?}", answer.data);
    let metrics = worker.metrics().await.expect("metrics");
    assert!(metrics.value("dnet_worker_redelivered_total").expect("redelivered") >= 1.0);
    assert_eq!(metrics.value("dnet_worker_poisoned_total").expect("poisoned"), 0.0);
}

/// Removes a queue policy when dropped, even if the test fails.
struct Policy<'a> {
    broker: &'a Broker,
    name: String,
}

impl Drop for Policy<'_> {
    fn drop(&mut self) {
        let _ = self.broker.rabbitmqctl(&["clear_policy", &self.name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_given_back_while_the_queue_refuses_copies_is_not_counted_as_a_death() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = TransmissionUnit::start(&broker, queue.name(), &["--timeout", "120s"])
        .await
        .expect("unit starts");
    let flags = ["--max-attempts", "1", "--max-batch-size", "48", "--prefetch", "2"];
    let mut stopping = ComputationUnit::start(&broker, queue.name(), 16, SEED, &flags)
        .await
        .expect("worker starts");
    let client = unit.client().await.expect("client");
    // Two requests the worker holds, not yet computed (it is stopped).
    stopping.process.signal("STOP").expect("SIGSTOP");
    let calls: Vec<_> = [48, 1]
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let (mut client, request) = (client.clone(), request(0, &images(n, 400 + i as u64)));
            tokio::spawn(async move { client.compute(request).await })
        })
        .collect();
    wait_for("the worker to hold both", PATIENCE, || async {
        (broker.queue_counts(queue.name()).ok()?? == (0, 2, 1)).then_some(())
    })
    .await
    .expect("held");

    // The queue refuses every message for a while (a full queue that rejects publishing).
    let policy = Policy {
        broker: &broker,
        name: format!("refuse-{}", queue.name()),
    };
    let pattern = format!("^{}$", queue.name());
    broker
        .rabbitmqctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            &policy.name,
            &pattern,
            r#"{"max-length":0,"overflow":"reject-publish"}"#,
        ])
        .expect("policy set");
    // Told to stop as it resumes: what it has not computed, it gives back.
    stopping.process.signal("TERM").expect("SIGTERM");
    stopping.process.signal("CONT").expect("SIGCONT");
    stopping
        .process
        .wait_for_event(
            "the broker refused the copy of a request given back; trying again",
            PATIENCE,
        )
        .await
        .expect("the copy is refused");
    drop(policy);
    let exit = stopping.process.wait_exit(PATIENCE).await.expect("exits");
    assert!(exit.success(), "{exit:?}");

    let successor = ComputationUnit::start(&broker, queue.name(), 16, SEED, &["--max-attempts", "1"])
        .await
        .expect("successor starts");
    for call in calls {
        let answer = call.await.expect("task").expect("answered").into_inner();
        assert_eq!(answer.status, StatusCode::Success as i32, "{:?}", answer.data);
    }
    let metrics = successor.metrics().await.expect("metrics");
    assert_eq!(metrics.value("dnet_worker_poisoned_total").expect("poisoned"), 0.0);
    assert_eq!(
        metrics.value("dnet_worker_redelivered_total").expect("redelivered"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_unit_that_stops_computes_nothing_for_the_calls_it_gave_up() {
    // 24 forwards of 64 images queued, and a 200 ms grace: far more work than
    // the grace covers on any machine; the unit ends after the forward it is in.
    let mut unit = direct(
        16,
        &[
            "--max-batch-size",
            "64",
            "--shutdown-grace",
            "200ms",
            "--timeout",
            "300s",
        ],
    )
    .await;
    let client = unit.client().await.expect("client");
    let calls: Vec<_> = (0..24)
        .map(|i| {
            let (mut client, request) = (client.clone(), request(0, &images(64, 500 + i)));
            tokio::spawn(async move { client.compute(request).await })
        })
        .collect();
    wait_for("every call in flight", PATIENCE, || async {
        (unit.metrics().await.ok()?.ordinary("dnet_in_flight").ok()? == 24.0).then_some(())
    })
    .await
    .expect("in flight");
    unit.process.signal("TERM").expect("SIGTERM");
    let exit = unit.process.wait_exit(PATIENCE).await.expect("exits");
    assert!(exit.success(), "{exit:?}");
    for call in calls {
        let _ = call.await;
    }
    let stopped = unit.process.events("model thread stopped");
    let stopped = stopped.first().unwrap_or_else(|| panic!("{}", unit.process.log()));
    // A call the drain gave up is settled uncomputed: given back, or its
    // caller found gone first.
    let count = |field: &str| stopped[field].as_u64();
    let (forwards, given_back, gone) = (count("forwards"), count("given_back"), count("callers_gone"));
    assert!(
        matches!((forwards, given_back, gone), (Some(f), Some(g), Some(c)) if f + g + c == 24 && g + c >= 1),
        "the calls given up were not computed: {stopped}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_watched_by_the_unit_before_it_drains_at_once_when_nothing_is_in_flight() {
    // The previous unit's balancer keeps a health watch open on this one: a
    // call that never ends by itself, which the drain must not wait for.
    let mut watched = direct(16, &["--shutdown-grace", "60s"]).await;
    let first = direct(8, &["--thresholds", &thresholds(1.0), "-n", &watched.endpoint()]).await;
    wait_for_next_addresses(&first, 1.0).await;

    watched.process.signal("TERM").expect("SIGTERM");
    let exit = watched.process.wait_exit(PATIENCE).await.expect("exits");
    assert!(exit.success(), "{exit:?}");
    assert!(
        watched
            .process
            .events("grace period over, abandoning calls in flight")
            .is_empty(),
        "{}",
        watched.process.log()
    );
    assert_eq!(watched.process.events("drained").len(), 1);
    wait_for_next_addresses(&first, 0.0).await;
}
