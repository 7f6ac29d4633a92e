//! Limits that hold before the cost is paid (docs/architecture.md,
//! "Admission control" and "Deadlines"): a caller's deadline is cut to
//! `--max-deadline` before it becomes an AMQP expiration; calls over the
//! admission limits are refused before their message is read; a message the
//! broker refuses does not stop the unit.

mod common;

use std::time::Duration;

use common::{request, success, Behaviour, Worker};
use dnet_proto::{Data, StatusCode};
use dnet_testkit::flood::{flood, framed, peak_rss, Ended};
use dnet_testkit::grpc::wait_for_health;
use dnet_testkit::{Broker, PrivateBroker, TestQueue, TransmissionUnit};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// How long a test waits for a state it needs before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// A private RabbitMQ node with these `rabbitmq.conf` lines.
async fn private_broker(config: &'static str) -> PrivateBroker {
    tokio::task::spawn_blocking(move || PrivateBroker::start_with_config(config))
        .await
        .expect("task")
        .expect("private broker")
}

async fn unit(broker: &Broker, queue: &TestQueue, extra: &[&str]) -> TransmissionUnit {
    TransmissionUnit::start(broker, queue.name(), extra)
        .await
        .expect("transmission unit starts")
}

#[tokio::test]
async fn a_fifty_day_deadline_is_cut_to_max_deadline_and_later_calls_are_answered() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--max-deadline", "2m"]).await;
    let worker = Worker::start(&broker, queue.name(), 10, |r| Behaviour::Reply(success(16, r.x))).await;
    let mut client = unit.client().await.expect("client");

    // 50 days: as an AMQP expiration, more than 2^32 - 1 ms, which newer
    // RabbitMQ releases refuse by closing the publishing channel.
    let mut long = tonic::Request::new(request(0, b"long"));
    long.set_timeout(Duration::from_secs(50 * 24 * 3600));
    let answer = client.compute(long).await.expect("answered").into_inner();
    assert_eq!(answer.status, StatusCode::Success as i32);
    let mut ordinary = tonic::Request::new(request(0, b"ordinary"));
    ordinary.set_timeout(Duration::from_secs(10));
    let answer = client.compute(ordinary).await.expect("answered").into_inner();
    assert_eq!(answer.status, StatusCode::Success as i32);

    let expirations: Vec<u64> = worker
        .properties
        .lock()
        .expect("lock")
        .iter()
        .map(|p| {
            p.expiration()
                .as_ref()
                .expect("expiration")
                .as_str()
                .parse()
                .expect("ms")
        })
        .collect();
    assert_eq!(expirations.len(), 2);
    assert!(
        (100_000..=120_000).contains(&expirations[0]),
        "the long call's expiration is --max-deadline: {expirations:?}"
    );
    assert!(expirations[1] <= 10_000, "{expirations:?}");
    let metrics = unit.metrics().await.expect("metrics");
    assert_eq!(metrics.value("dnet_deadline_clamped_total").expect("clamped"), 1.0);
    worker.stop().await;
}

#[tokio::test]
async fn a_max_message_bytes_over_the_brokers_limit_stops_the_unit_at_start_naming_both() {
    // A broker whose largest message is 1 MiB; the unit's default is 48 MiB.
    let node = private_broker("max_message_size = 1048576").await;
    let broker = node.broker().clone();
    let queue = TestQueue::new(&broker);
    let mut unit = TransmissionUnit::launch(&broker, queue.name(), &[])
        .await
        .expect("the unit starts serving gRPC");
    let status = unit
        .process
        .wait_exit(PATIENCE)
        .await
        .expect("the unit stops by itself");
    assert!(!status.success(), "a configuration error: {status}");
    let log = unit.process.log();
    assert!(
        log.contains("--max-message-bytes 50331648") && log.contains("1048576"),
        "names both numbers: {log}"
    );
    // Within the broker's limit it starts.
    let _unit = TransmissionUnit::start(&broker, queue.name(), &["--max-message-bytes", "1048576"])
        .await
        .expect("within the limit the unit starts");
    drop(_unit);
    drop(queue);
    tokio::task::spawn_blocking(move || drop(node)).await.expect("stopped");
}

#[tokio::test]
async fn a_message_the_broker_refuses_for_its_size_is_not_sent_again_and_the_unit_stays_ready() {
    // The unit starts within the broker's 1 MiB; then the broker's limit
    // drops to 256 KiB (an operator's change) for the channels opened from
    // now on, and the unit reconnects: a call of 512 KiB passes the unit's
    // own limit and the broker refuses it by closing the publish channel.
    let node = private_broker("max_message_size = 1048576").await;
    let broker = node.broker().clone();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--max-message-bytes", "1048576"]).await;
    let worker = Worker::start(&broker, queue.name(), 10, |r| Behaviour::Reply(success(16, r.x))).await;
    broker
        .rabbitmqctl(&["eval", "application:set_env(rabbit, max_message_size, 262144)."])
        .expect("lower the broker's limit");
    broker
        .close_connection(&format!("transmission-unit {}", unit.name))
        .expect("the unit reconnects");
    dnet_testkit::wait_for("a second session", PATIENCE, || {
        let sessions = unit.process.events("ready: publishing to the computation queue").len();
        async move { (sessions >= 2).then_some(()) }
    })
    .await
    .expect("a second session");
    wait_for_health(unit.address, ServingStatus::Serving, PATIENCE)
        .await
        .expect("serving on the new session");
    let health = dnet_testkit::grpc::health_updates(unit.address)
        .await
        .expect("health watch");
    let mut client = unit.client().await.expect("client");

    let refused = client
        .compute(request(0, &vec![7_u8; 512 << 10]))
        .await
        .expect_err("the broker refuses 512 KiB");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("for its size") && refused.message().contains("262144"),
        "says why: {}",
        refused.message()
    );
    let answer = client
        .compute(request(0, b"small"))
        .await
        .expect("answered after the refusal")
        .into_inner();
    assert_eq!(
        answer.data,
        Some(Data::Result(dnet_proto::Bytes::from_static(b"small")))
    );
    // Published once: sent again, it would have closed the channel again
    // before the small call, which needed the channel reopened, was answered.
    dnet_testkit::wait_for("the channel's reopening logged", PATIENCE, || {
        let closes = unit
            .process
            .events("RabbitMQ closed the publish channel; reopening it")
            .len();
        async move { (closes >= 1).then_some(()) }
    })
    .await
    .expect("reopened");
    let closes = unit
        .process
        .events("RabbitMQ closed the publish channel; reopening it")
        .len();
    assert_eq!(closes, 1, "the refused message was not sent again");
    let seen = health.stop();
    assert!(
        seen.iter().all(|status| *status == ServingStatus::Serving),
        "the unit stayed ready through the channel's reopening: {seen:?}"
    );
    worker.stop().await;
    drop(unit);
    drop(queue);
    tokio::task::spawn_blocking(move || drop(node)).await.expect("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_qstatus_calls_is_answered_from_the_polled_counts_and_they_stay_current() {
    // A broker that gives a connection 4 channels: the unit's session uses
    // 3 (publish, replies, the counts' reader). A Qstatus that opened a
    // channel of its own would be refused past the fourth at once.
    let node = private_broker("channel_max = 4").await;
    let broker = node.broker().clone();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &[]).await;
    let client = unit.client().await.expect("client");
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.qstatus(dnet_proto::QstatusRequest {}).await })
        })
        .collect();
    let mut failed = Vec::new();
    for call in calls {
        if let Err(status) = call.await.expect("task") {
            failed.push(status.message().to_owned());
        }
    }
    assert!(
        failed.is_empty(),
        "every Qstatus is answered from the polled counts: {failed:?}"
    );
    // The broker's own count of what waits, after the flood: the reader still reads it.
    common::publish_raw(&broker, queue.name(), 3).await;
    dnet_testkit::wait_for("Qstatus shows the 3 messages", PATIENCE, || async {
        let (waiting, _) = unit.qstatus().await.ok()?;
        (waiting == 3).then_some(())
    })
    .await
    .expect("current counts");
    assert_eq!(broker.queue_counts(queue.name()).expect("counts").map(|c| c.0), Some(3));
    drop(unit);
    drop(queue);
    tokio::task::spawn_blocking(move || drop(node)).await.expect("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_calls_stays_under_the_memory_bound_and_the_surplus_is_refused_unread() {
    // 8 connections x 8 calls of 30 MB against 4 call slots while the
    // worker holds every request: 4 are admitted, 60 are refused before
    // their message is read (by admission, RESOURCE_EXHAUSTED, or by HTTP/2,
    // REFUSED_STREAM, when a connection has more streams open than it takes).
    const CONNECTIONS: usize = 8;
    const CALLS: usize = 8;
    const ADMITTED: usize = 4;
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(
        &broker,
        &queue,
        &["--max-in-flight", "4", "--max-connections", "16", "--timeout", "120s"],
    )
    .await;
    let held = Worker::start(&broker, queue.name(), 10, |_| Behaviour::Hold).await;
    // The documented bound (docs/architecture.md): a request and a reply
    // of --max-message-bytes (48 MiB) per call slot, a connection window
    // (16 MiB) per connection, and the process's own 64 MiB.
    let bound: u64 = (ADMITTED as u64 * 2 * 48 + 16 * 16 + 64) << 20;

    let message = framed(&request(0, &vec![1_u8; 30_000_000]));
    let flood = flood(unit.address, CONNECTIONS, CALLS, message, Duration::from_secs(120))
        .await
        .expect("flood");
    dnet_testkit::wait_for("the admitted calls to reach the worker", PATIENCE, || async {
        (held.properties.lock().ok()?.len() == ADMITTED).then_some(())
    })
    .await
    .expect("admitted calls published");
    let surplus = CONNECTIONS * CALLS - ADMITTED;
    let ended = dnet_testkit::wait_for("the surplus to be refused", PATIENCE, || async {
        let ended = flood.ended();
        (ended.len() >= surplus).then_some(ended)
    })
    .await
    .expect("surplus refused while the worker holds the others");
    assert!(ended.iter().all(Ended::refused), "{ended:?}");
    let peak = peak_rss(unit.process.id()).expect("peak memory");
    eprintln!("peak RSS of the unit {} MiB, bound {} MiB", peak >> 20, bound >> 20);
    assert!(
        peak <= bound,
        "peak RSS {} MiB over the bound of {} MiB",
        peak >> 20,
        bound >> 20
    );

    // The worker resumes (another takes the held requests back from the queue).
    held.stop().await;
    let worker = Worker::start(&broker, queue.name(), 10, |r| {
        Behaviour::Reply(success(16, r.x.slice(..1)))
    })
    .await;
    let ended = flood.finish().await.expect("flood");
    let answered = ended.iter().filter(|e| matches!(e, Ended::Status(0, _))).count();
    let refused = ended.iter().filter(|e| e.refused()).count();
    assert_eq!((answered, refused), (ADMITTED, surplus), "{ended:?}");
    let mut ninth = unit.client().await.expect("a ninth connection");
    let answer = ninth
        .compute(request(0, b"small"))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(answer.status, StatusCode::Success as i32);
    worker.stop().await;
}
