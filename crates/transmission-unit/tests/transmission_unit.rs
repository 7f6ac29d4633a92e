//! The transmission unit (its binary) against the real RabbitMQ, with scripted workers.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{not_success, request, success, Behaviour, Worker};
use dnet_proto::{Data, QstatusRequest, StatusCode};
use dnet_testkit::grpc::{health, wait_for_health};
use dnet_testkit::{free_port, wait_for, Broker, TestQueue, TransmissionUnit};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// How long a test waits for a state it needs before it fails.
const PATIENCE: Duration = Duration::from_secs(20);

async fn unit(broker: &Broker, queue: &TestQueue, extra: &[&str]) -> TransmissionUnit {
    TransmissionUnit::start(broker, queue.name(), extra)
        .await
        .expect("transmission unit starts")
}

#[tokio::test]
async fn success_passes_through_with_this_units_hop() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &[]).await;
    let worker = Worker::start(&broker, queue.name(), 10, |r| Behaviour::Reply(success(16, r.x))).await;

    let answer = unit
        .client()
        .await
        .expect("client")
        .compute(request(12, b"tensor"))
        .await
        .expect("answer")
        .into_inner();

    assert_eq!(answer.status, StatusCode::Success as i32);
    assert_eq!(
        answer.data,
        Some(Data::Result(dnet_proto::Bytes::from_static(b"tensor")))
    );
    assert_eq!((answer.exit_layer, answer.confidence), (16, 0.95));
    assert_eq!(answer.hops.len(), 1);
    let hop = &answer.hops[0];
    assert_eq!(
        (hop.unit.as_str(), hop.start_layer, hop.exit_layer, hop.compute_us),
        (unit.name.as_str(), 12, 16, 100)
    );
    assert!(hop.total_us >= hop.queue_wait_us + hop.compute_us, "{hop:?}");
    worker.stop().await;
}

/// A log written to a file (as here) or a pipe carries no ANSI colour
/// codes: they are for terminals only.
#[tokio::test]
async fn a_log_written_to_a_file_has_no_colour_codes() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &[]).await;
    let log = unit.process.log();
    assert!(log.contains("INFO"), "the unit logged its start: {log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log:?}");
}

#[tokio::test]
async fn not_success_is_forwarded_along_three_units() {
    let broker = Broker::local();
    let queues = [
        TestQueue::new(&broker),
        TestQueue::new(&broker),
        TestQueue::new(&broker),
    ];
    let last = unit(&broker, &queues[2], &[]).await;
    let middle = unit(&broker, &queues[1], &["-n", &last.endpoint()]).await;
    let first = unit(&broker, &queues[0], &["-n", &middle.endpoint()]).await;
    let workers = [
        Worker::start(&broker, queues[0].name(), 10, |r| {
            Behaviour::Reply(not_success(4, [&r.x[..], b"+4"].concat()))
        })
        .await,
        Worker::start(&broker, queues[1].name(), 10, |r| {
            Behaviour::Reply(not_success(8, [&r.x[..], b"+8"].concat()))
        })
        .await,
        Worker::start(&broker, queues[2].name(), 10, |r| {
            Behaviour::Reply(success(12, [&r.x[..], b"+12"].concat()))
        })
        .await,
    ];

    let answer = first
        .client()
        .await
        .expect("client")
        .compute(request(0, b"x"))
        .await
        .expect("answer")
        .into_inner();

    assert_eq!(answer.status, StatusCode::Success as i32);
    assert_eq!(
        answer.data,
        Some(Data::Result(dnet_proto::Bytes::from_static(b"x+4+8+12"))),
        "each unit got its predecessor's tensor"
    );
    assert_eq!(answer.exit_layer, 12);
    let hops: Vec<_> = answer
        .hops
        .iter()
        .map(|h| (h.unit.clone(), h.start_layer, h.exit_layer))
        .collect();
    assert_eq!(
        hops,
        vec![
            (first.name.clone(), 0, 4),
            (middle.name.clone(), 4, 8),
            (last.name.clone(), 8, 12)
        ]
    );
    assert!(answer.hops[0].total_us >= answer.hops[1].total_us, "{:?}", answer.hops);
    assert!(answer.hops[1].total_us >= answer.hops[2].total_us, "{:?}", answer.hops);
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test]
async fn not_success_without_next_address_comes_back_as_is() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &[]).await;
    let worker = Worker::start(&broker, queue.name(), 10, |r| Behaviour::Reply(not_success(8, r.x))).await;

    let answer = unit
        .client()
        .await
        .expect("client")
        .compute(request(0, b"image"))
        .await
        .expect("answer")
        .into_inner();

    assert_eq!(answer.status, StatusCode::NotSuccess as i32);
    assert_eq!(answer.data, Some(Data::NextRequest(request(8, b"image"))));
    assert_eq!(answer.hops.len(), 1);
    assert_eq!((answer.hops[0].start_layer, answer.hops[0].exit_layer), (0, 8));
    worker.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_calls_each_get_their_own_answer() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    // Room for all of them, whatever this machine's memory makes the default.
    let unit = unit(&broker, &queue, &["--max-in-flight", "256"]).await;
    let worker = Worker::start(&broker, queue.name(), 50, |r| Behaviour::Reply(success(16, r.x))).await;
    let client = unit.client().await.expect("client");

    let calls = (0..200_u32).map(|i| {
        let mut client = client.clone();
        tokio::spawn(async move {
            let x = format!("request-{i}").into_bytes();
            let answer = client.compute(request(0, &x)).await.expect("answer").into_inner();
            (x, answer)
        })
    });
    let answers = futures::future::join_all(calls).await;

    for joined in answers {
        let (x, answer) = joined.expect("call task");
        assert_eq!(answer.data, Some(Data::Result(x.into())));
    }
    let metrics = unit.metrics().await.expect("metrics");
    assert_eq!(metrics.value("dnet_pending_replies").expect("gauge"), 0.0);
    assert_eq!(
        metrics
            .labelled("dnet_requests_total", "status", "SUCCESS")
            .expect("counter"),
        200.0
    );
    worker.stop().await;
}

#[tokio::test]
async fn deadline_expiry_gives_deadline_exceeded_and_leaves_no_entry() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--timeout", "300ms"]).await;
    let held = Worker::start(&broker, queue.name(), 10, |_| Behaviour::Hold).await;
    let mut client = unit.client().await.expect("client");

    // The unit's default deadline (no deadline from the caller).
    let started = Instant::now();
    let status = client.compute(request(0, b"slow")).await.expect_err("no reply in time");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains(queue.name()), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // The caller's own deadline wins over the default, in both directions:
    // longer here, so the unit waits past its 300 ms default.
    let mut with_deadline = tonic::Request::new(request(0, b"slow"));
    with_deadline.set_timeout(Duration::from_millis(1000));
    let started = Instant::now();
    let status = client.compute(with_deadline).await.expect_err("no reply in time");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the unit gave up after {:?}, before the caller's deadline",
        started.elapsed()
    );

    let metrics = unit.metrics().await.expect("metrics");
    assert_eq!(metrics.value("dnet_pending_replies").expect("gauge"), 0.0);
    assert_eq!(
        metrics
            .labelled("dnet_requests_total", "status", "DeadlineExceeded")
            .expect("counter"),
        2.0
    );
    held.stop().await;
}

#[tokio::test]
async fn a_late_reply_is_counted_dropped_and_the_next_call_gets_its_own() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--timeout", "300ms"]).await;
    // Replies only after 800 ms: the first call has given up by then.
    let worker = Worker::start(&broker, queue.name(), 10, |r| {
        if r.x == b"late"[..] {
            Behaviour::ReplyAfter(Duration::from_millis(800), success(16, r.x))
        } else {
            Behaviour::Reply(success(16, r.x))
        }
    })
    .await;
    let mut client = unit.client().await.expect("client");

    let status = client.compute(request(0, b"late")).await.expect_err("too late");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let late = wait_for("the late reply to be counted", PATIENCE, || async {
        let late = unit.metrics().await.ok()?.value("dnet_late_replies_total").ok()?;
        (late > 0.0).then_some(late)
    })
    .await
    .expect("the late reply arrives and is dropped");
    assert_eq!(late, 1.0, "exactly the one late reply");

    let answer = client
        .compute(request(0, b"on time"))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(
        answer.data,
        Some(Data::Result(dnet_proto::Bytes::from_static(b"on time")))
    );
    let metrics = unit.metrics().await.expect("metrics");
    assert_eq!(metrics.value("dnet_pending_replies").expect("gauge"), 0.0);
    assert_eq!(metrics.value("dnet_late_replies_total").expect("counter"), 1.0);
    worker.stop().await;
}

#[tokio::test]
async fn next_unit_down_gives_unavailable_at_once_with_retries_on() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let next = format!("127.0.0.1:{}", free_port());
    let unit = unit(&broker, &queue, &["-n", &next]).await;
    let worker = Worker::start(&broker, queue.name(), 10, |r| Behaviour::Reply(not_success(8, r.x))).await;

    let mut call = tonic::Request::new(request(0, b"x"));
    call.set_timeout(Duration::from_secs(20));
    let started = Instant::now();
    let status = unit
        .client()
        .await
        .expect("client")
        .compute(call)
        .await
        .expect_err("next unit is down");

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&next), "names the next unit: {status:?}");
    // None of its addresses serves: waiting for it helps no caller (a
    // replica that dies while others serve is what retries are for).
    let metrics = unit.metrics().await.expect("metrics");
    assert_eq!(
        metrics.labelled("dnet_retries_total", "target", "next").unwrap_or(0.0),
        0.0
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?} of 20 s",
        started.elapsed()
    );
    worker.stop().await;
}

#[tokio::test]
async fn without_retries_next_unit_down_gives_unavailable_at_once() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let next = format!("127.0.0.1:{}", free_port());
    let unit = unit(&broker, &queue, &["-n", &next, "--retry-budget", "0"]).await;
    let worker = Worker::start(&broker, queue.name(), 10, |r| Behaviour::Reply(not_success(8, r.x))).await;

    let started = Instant::now();
    let status = unit
        .client()
        .await
        .expect("client")
        .compute(request(0, b"x"))
        .await
        .expect_err("next unit is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no retry waits for the 30 s deadline: {:?}",
        started.elapsed()
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_dying_mid_request_loses_nothing() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--timeout", "20s"]).await;
    let taken = Arc::new(AtomicBool::new(false));
    let taken_by_first = Arc::clone(&taken);
    let doomed = Worker::start(&broker, queue.name(), 1, move |_| {
        taken_by_first.store(true, Ordering::SeqCst);
        Behaviour::Die
    })
    .await;
    let mut client = unit.client().await.expect("client");
    let call = tokio::spawn(async move { client.compute(request(0, b"precious")).await });
    wait_for("the doomed worker to take the request", PATIENCE, || {
        let taken = taken.load(Ordering::SeqCst);
        async move { taken.then_some(()) }
    })
    .await
    .expect("taken");

    let rescuer = Worker::start(&broker, queue.name(), 1, |r| {
        Behaviour::Reply(success(16, [&b"rescued:"[..], &r.x[..]].concat()))
    })
    .await;
    let answer = call
        .await
        .expect("call task")
        .expect("answered by the second worker")
        .into_inner();

    assert_eq!(
        answer.data,
        Some(Data::Result(dnet_proto::Bytes::from_static(b"rescued:precious")))
    );
    doomed.stop().await;
    rescuer.stop().await;
}

#[tokio::test]
async fn qstatus_counts_messages_and_consumers() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--timeout", "20s"]).await;
    let client = unit.client().await.expect("client");
    assert_eq!(unit.qstatus().await.expect("qstatus"), (0, 0));

    let calls: Vec<_> = (0..3_u8)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { client.compute(request(0, &[i])).await })
        })
        .collect();
    wait_for("three requests waiting with nobody consuming", PATIENCE, || async {
        (unit.qstatus().await.ok()? == (3, 0)).then_some(())
    })
    .await
    .expect("Qstatus reports (3, 0)");

    let workers = [
        Worker::start(&broker, queue.name(), 1, |r| Behaviour::Reply(success(16, r.x))).await,
        Worker::start(&broker, queue.name(), 1, |r| Behaviour::Reply(success(16, r.x))).await,
    ];
    for call in calls {
        call.await.expect("call task").expect("answered once workers came");
    }
    // Qstatus answers from the counts read every 250 ms.
    wait_for("Qstatus reports (0, 2)", PATIENCE, || async {
        let status = client.clone().qstatus(QstatusRequest {}).await.ok()?.into_inner();
        ((status.qlength, status.consumer) == (0, 2)).then_some(())
    })
    .await
    .expect("two consumers, nothing waiting");
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test]
async fn an_oversize_request_gets_resource_exhausted_naming_the_limit() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--max-message-bytes", "1000"]).await;
    let status = unit
        .client()
        .await
        .expect("client")
        .compute(request(0, &[0_u8; 2000]))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("1000"), "names the limit: {status:?}");
    assert_eq!(
        broker.queue_counts(queue.name()).expect("rabbitmqctl"),
        Some((0, 0, 0)),
        "nothing reached the queue"
    );
}

#[tokio::test]
async fn health_is_not_serving_while_the_broker_is_unreachable() {
    let broker = Broker::local();
    let nowhere = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let unit = TransmissionUnit::launch(&broker, "unused", &["-a", &nowhere])
        .await
        .expect("gRPC is up even without a broker");

    assert_eq!(
        health(unit.address, "unit.DNet").await,
        Some(ServingStatus::NotServing),
        "not ready without a broker"
    );
    assert_eq!(
        health(unit.address, "").await,
        Some(ServingStatus::Serving),
        "but alive: no restart for a broker outage"
    );
    let mut call = tonic::Request::new(request(0, b"x"));
    call.set_timeout(Duration::from_secs(1));
    let status = unit
        .client()
        .await
        .expect("client")
        .compute(call)
        .await
        .expect_err("no broker");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

/// Starts a call that a holding worker keeps, then has the broker close the
/// unit's connection; returns the call.
async fn call_through_a_lost_connection(
    broker: &Broker,
    unit: &TransmissionUnit,
) -> tokio::task::JoinHandle<Result<tonic::Response<dnet_proto::ComputationResponse>, tonic::Status>> {
    let mut client = unit.client().await.expect("client");
    let call = tokio::spawn(async move { client.compute(request(0, b"in flight")).await });
    wait_for("the call to wait for its reply", PATIENCE, || async {
        let pending = unit.metrics().await.ok()?.value("dnet_pending_replies").ok()?;
        (pending == 1.0).then_some(())
    })
    .await
    .expect("one call in flight");
    broker
        .close_connection(&format!("transmission-unit {}", unit.name))
        .expect("the broker closes the unit's connection");
    call
}

#[tokio::test]
async fn a_call_survives_a_lost_broker_connection_by_a_retry() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--timeout", "30s"]).await;
    let held = Worker::start(&broker, queue.name(), 10, |_| Behaviour::Hold).await;
    let call = call_through_a_lost_connection(&broker, &unit).await;
    // The held copy is lost with the holder; a worker that answers takes the retry.
    held.stop().await;
    let worker = Worker::start(&broker, queue.name(), 10, |r| Behaviour::Reply(success(16, r.x))).await;

    let answer = call
        .await
        .expect("call task")
        .expect("answered after a retry")
        .into_inner();
    assert_eq!(
        answer.data,
        Some(Data::Result(dnet_proto::Bytes::from_static(b"in flight")))
    );
    let metrics = unit.metrics().await.expect("metrics");
    assert!(
        metrics
            .labelled("dnet_retries_total", "target", "queue")
            .expect("retries")
            >= 1.0
    );
    worker.stop().await;
}

#[tokio::test]
async fn without_retries_a_lost_broker_connection_fails_in_flight_calls_then_recovers() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--timeout", "30s", "--retry-budget", "0"]).await;
    let held = Worker::start(&broker, queue.name(), 10, |_| Behaviour::Hold).await;
    let started = Instant::now();
    let call = call_through_a_lost_connection(&broker, &unit).await;
    let status = call.await.expect("call task").expect_err("connection lost");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    wait_for_health(unit.address, ServingStatus::Serving, PATIENCE)
        .await
        .expect("reconnected");
    held.stop().await;
    let worker = Worker::start(&broker, queue.name(), 10, |r| Behaviour::Reply(success(16, r.x))).await;
    let answer = unit
        .client()
        .await
        .expect("client")
        .compute(request(0, b"after"))
        .await
        .expect("served again")
        .into_inner();
    assert_eq!(
        answer.data,
        Some(Data::Result(dnet_proto::Bytes::from_static(b"after")))
    );
    worker.stop().await;
}

#[tokio::test]
async fn calls_beyond_max_in_flight_are_refused_at_once() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--max-in-flight", "2"]).await;
    let held = Worker::start(&broker, queue.name(), 10, |_| Behaviour::Hold).await;
    let client = unit.client().await.expect("client");
    let _calls: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.compute(request(0, b"held")).await })
        })
        .collect();
    wait_for("two calls in flight", PATIENCE, || async {
        (unit.metrics().await.ok()?.ordinary("dnet_in_flight").ok()? == 2.0).then_some(())
    })
    .await
    .expect("two calls in flight");

    let started = Instant::now();
    let status = client
        .clone()
        .compute(request(0, b"third"))
        .await
        .expect_err("saturated");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-in-flight"), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "at once: {:?}",
        started.elapsed()
    );
    held.stop().await;
}

#[tokio::test]
async fn calls_are_refused_while_the_queue_is_longer_than_max_queue() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--max-queue", "2"]).await;
    let client = unit.client().await.expect("client");
    let _waiting: Vec<_> = (0..3)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.compute(request(0, b"waits")).await })
        })
        .collect();
    wait_for(
        "three requests waiting, as the unit reads its queue",
        PATIENCE,
        || async { (unit.metrics().await.ok()?.value("dnet_queue_waiting").ok()? == 3.0).then_some(()) },
    )
    .await
    .expect("the unit saw its queue");

    let status = client
        .clone()
        .compute(request(0, b"fourth"))
        .await
        .expect_err("saturated");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-queue"), "{status:?}");
}

#[tokio::test]
async fn requests_carry_their_deadline_and_expire_unread_in_the_queue() {
    use futures::StreamExt as _;
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &[]).await;
    let mut call = tonic::Request::new(request(0, b"nobody computes this"));
    call.set_timeout(Duration::from_secs(3));
    let mut client = unit.client().await.expect("client");
    let call = tokio::spawn(async move { client.compute(call).await });
    wait_for_queue_counts(&broker, &queue, (1, 0, 0)).await;

    // Read it without taking it away (a consumer that gives it back at once).
    let connection = lapin::Connection::connect(&broker.uri, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let mut consumer = channel
        .basic_consume(queue.name().into(), "".into(), Default::default(), Default::default())
        .await
        .expect("consume");
    let delivery = consumer.next().await.expect("a delivery").expect("delivery");
    let properties = &delivery.properties;
    let expiration: u64 = properties
        .expiration()
        .as_ref()
        .and_then(|e| e.as_str().parse().ok())
        .expect("a per-message expiration");
    assert!(
        (1000..=3000).contains(&expiration),
        "the time left, in ms: {expiration}"
    );
    let due = dnet_amqp::deadline::deadline_of(properties).expect("the deadline header");
    let left = due.saturating_duration_since(std::time::Instant::now());
    assert!(
        left <= Duration::from_secs(3) && left >= Duration::from_millis(500),
        "{left:?} left"
    );
    delivery
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .expect("give it back");
    let _ = connection.close(200, "read".into()).await;

    let status = call.await.expect("call task").expect_err("nobody answers");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    // The worker is told to be done a reply's way back before the call gives
    // up (the header is in whole milliseconds: 2 ms of rounding allowed).
    let kept_back = Instant::now().saturating_duration_since(due);
    assert!(
        kept_back >= dnet_edge::deadline::WAY_BACK - Duration::from_millis(2),
        "the call ended {kept_back:?} after the deadline the worker was given"
    );
    // The broker drops it unread once it expires.
    wait_for_queue_counts(&broker, &queue, (0, 0, 0)).await;
}

/// Waits until the broker counts (ready, unacknowledged, consumers) on `queue`.
async fn wait_for_queue_counts(broker: &Broker, queue: &TestQueue, counts: (u64, u64, u64)) {
    wait_for(&format!("the queue to hold {counts:?}"), PATIENCE, || async {
        (broker.queue_counts(queue.name()).ok()? == Some(counts)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; the broker counts {:?}", broker.queue_counts(queue.name())));
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_and_exits_zero() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    // The grace this test relies on, stated: calls of 1 s, on a busy machine.
    let mut unit = unit(&broker, &queue, &["--shutdown-grace", "60s"]).await;
    let worker = Worker::start(&broker, queue.name(), 10, |r| {
        Behaviour::ReplyAfter(Duration::from_millis(1000), success(16, r.x))
    })
    .await;
    let mut client = unit.client().await.expect("client");
    let call = tokio::spawn(async move { client.compute(request(0, b"in flight")).await });
    wait_for("the call to be in flight", PATIENCE, || async {
        let in_flight = unit.metrics().await.ok()?.ordinary("dnet_in_flight").ok()?;
        (in_flight == 1.0).then_some(())
    })
    .await
    .expect("one call in flight");

    unit.process.signal("TERM").expect("SIGTERM");
    let answer = call
        .await
        .expect("call task")
        .expect("the in-flight call is drained")
        .into_inner();
    assert_eq!(
        answer.data,
        Some(Data::Result(dnet_proto::Bytes::from_static(b"in flight")))
    );
    let exit = unit.process.wait_exit(PATIENCE).await.expect("exits");
    assert!(exit.success(), "{exit:?}");
    // A planned stop closes the broker session in order: no error logged.
    let log = unit.process.log();
    let errors: Vec<&str> = log.lines().filter(|line| line.contains(r#""level":"ERROR""#)).collect();
    assert!(errors.is_empty(), "{errors:?}");
    worker.stop().await;
}

#[tokio::test]
async fn the_broker_password_comes_from_a_file_and_on_the_command_line_it_is_warned_of() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let host = broker.host_port().expect("host:port");
    let (user, password) = ("guest", "guest");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{password}\n")).expect("write");
    let without_password = format!("amqp://{user}@{host}/%2f");
    let file = file.display().to_string();

    let warning = "--amqp-password on the command line is visible to every user of this machine (ps); \
                   set DNET_AMQP_PASSWORD or --amqp-password-file instead";

    let from_file = unit(
        &broker,
        &queue,
        &["-a", &without_password, "--amqp-password-file", &file],
    )
    .await;
    assert!(from_file.process.events(warning).is_empty());
    let mut from_flag = unit(&broker, &queue, &["-a", &without_password, "--amqp-password", password]).await;
    from_flag
        .process
        .wait_for_event(warning, PATIENCE)
        .await
        .expect("warned");
}
