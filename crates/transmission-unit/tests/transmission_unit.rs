//! The transmission unit against the real RabbitMQ, with test workers.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{delete_queue, free_port, not_success, random_queue, success, Behaviour, Unit, Worker};
use dnet_proto::{ComputationRequest, Data, QstatusRequest, StatusCode};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn request(start_layer: u64, x: &[u8]) -> ComputationRequest {
    ComputationRequest {
        start_layer,
        x: x.to_vec(),
    }
}

#[tokio::test]
async fn success_passes_through_with_this_units_hop() {
    let queue = random_queue();
    let unit = Unit::start(&queue, &[]).await;
    let worker = Worker::start(&queue, 10, |r| Behaviour::Reply(success(16, r.x))).await;

    let answer = unit
        .client()
        .await
        .compute(request(12, b"tensor"))
        .await
        .expect("answer")
        .into_inner();

    assert_eq!(answer.status, StatusCode::Success as i32);
    assert_eq!(answer.data, Some(Data::Result(b"tensor".to_vec())));
    assert_eq!((answer.exit_layer, answer.confidence), (16, 0.95));
    assert_eq!(answer.hops.len(), 1);
    let hop = &answer.hops[0];
    assert_eq!(
        (hop.unit.as_str(), hop.start_layer, hop.exit_layer, hop.compute_us),
        (unit.name.as_str(), 12, 16, 100)
    );
    assert!(hop.total_us >= hop.queue_wait_us + hop.compute_us, "{hop:?}");
    worker.stop().await;
    unit.stop().await;
    delete_queue(&queue).await;
}

#[tokio::test]
async fn not_success_is_forwarded_along_three_units() {
    let queues = [random_queue(), random_queue(), random_queue()];
    let last = Unit::start(&queues[2], &[]).await;
    let middle = Unit::start(&queues[1], &["-n", &last.endpoint()]).await;
    let first = Unit::start(&queues[0], &["-n", &middle.endpoint()]).await;
    let workers = [
        Worker::start(&queues[0], 10, |r| {
            Behaviour::Reply(not_success(4, [r.x, b"+4".to_vec()].concat()))
        })
        .await,
        Worker::start(&queues[1], 10, |r| {
            Behaviour::Reply(not_success(8, [r.x, b"+8".to_vec()].concat()))
        })
        .await,
        Worker::start(&queues[2], 10, |r| {
            Behaviour::Reply(success(12, [r.x, b"+12".to_vec()].concat()))
        })
        .await,
    ];

    let answer = first
        .client()
        .await
        .compute(request(0, b"x"))
        .await
        .expect("answer")
        .into_inner();

    assert_eq!(answer.status, StatusCode::Success as i32);
    assert_eq!(
        answer.data,
        Some(Data::Result(b"x+4+8+12".to_vec())),
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
    for unit in [first, middle, last] {
        unit.stop().await;
    }
    for queue in &queues {
        delete_queue(queue).await;
    }
}

#[tokio::test]
async fn not_success_without_next_address_comes_back_as_is() {
    let queue = random_queue();
    let unit = Unit::start(&queue, &[]).await;
    let worker = Worker::start(&queue, 10, |r| Behaviour::Reply(not_success(8, r.x))).await;

    let answer = unit
        .client()
        .await
        .compute(request(0, b"image"))
        .await
        .expect("answer")
        .into_inner();

    assert_eq!(answer.status, StatusCode::NotSuccess as i32);
    assert_eq!(answer.data, Some(Data::NextRequest(request(8, b"image"))));
    assert_eq!(answer.hops.len(), 1);
    assert_eq!((answer.hops[0].start_layer, answer.hops[0].exit_layer), (0, 8));
    worker.stop().await;
    unit.stop().await;
    delete_queue(&queue).await;
}

#[tokio::test]
async fn two_hundred_concurrent_calls_each_get_their_own_answer() {
    let queue = random_queue();
    let unit = Unit::start(&queue, &[]).await;
    let worker = Worker::start(&queue, 50, |r| Behaviour::Reply(success(16, r.x))).await;
    let client = unit.client().await;

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
        assert_eq!(answer.data, Some(Data::Result(x)));
    }
    assert_eq!(unit.metric("dnet_pending_replies").await, 0.0);
    worker.stop().await;
    unit.stop().await;
    delete_queue(&queue).await;
}

#[tokio::test]
async fn deadline_expiry_gives_deadline_exceeded_and_leaves_no_entry() {
    let queue = random_queue();
    let unit = Unit::start(&queue, &["--timeout", "300ms"]).await;
    let held = Worker::start(&queue, 10, |_| Behaviour::Hold).await;
    let mut client = unit.client().await;

    // The unit's default deadline (no deadline from the caller).
    let started = Instant::now();
    let status = client.compute(request(0, b"slow")).await.expect_err("no reply in time");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains(&queue), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // The caller's own deadline is honoured the same way.
    let mut with_deadline = tonic::Request::new(request(0, b"slow"));
    with_deadline.set_timeout(Duration::from_millis(200));
    let status = client.compute(with_deadline).await.expect_err("no reply in time");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    assert_eq!(unit.metric("dnet_pending_replies").await, 0.0);
    held.stop().await;
    unit.stop().await;
    delete_queue(&queue).await;
}

#[tokio::test]
async fn a_late_reply_is_dropped_and_the_next_call_gets_its_own() {
    let queue = random_queue();
    let unit = Unit::start(&queue, &["--timeout", "300ms"]).await;
    // Replies only after 800 ms: the first call has given up by then.
    let worker = Worker::start(&queue, 10, |r| {
        if r.x == b"late" {
            Behaviour::ReplyAfter(Duration::from_millis(800), success(16, r.x))
        } else {
            Behaviour::Reply(success(16, r.x))
        }
    })
    .await;
    let mut client = unit.client().await;

    let status = client.compute(request(0, b"late")).await.expect_err("too late");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    tokio::time::sleep(Duration::from_millis(700)).await; // the late reply arrives meanwhile
    let answer = client
        .compute(request(0, b"on time"))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(answer.data, Some(Data::Result(b"on time".to_vec())));
    assert_eq!(unit.metric("dnet_pending_replies").await, 0.0);
    worker.stop().await;
    unit.stop().await;
    delete_queue(&queue).await;
}

#[tokio::test]
async fn next_unit_down_gives_unavailable_quickly() {
    let queue = random_queue();
    let next = format!("127.0.0.1:{}", free_port().await);
    let unit = Unit::start(&queue, &["-n", &next]).await;
    let worker = Worker::start(&queue, 10, |r| Behaviour::Reply(not_success(8, r.x))).await;

    let started = Instant::now();
    let status = unit
        .client()
        .await
        .compute(request(0, b"x"))
        .await
        .expect_err("next unit is down");

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&next), "names the next unit: {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    worker.stop().await;
    unit.stop().await;
    delete_queue(&queue).await;
}

#[tokio::test]
async fn a_worker_dying_mid_request_loses_nothing() {
    let queue = random_queue();
    let unit = Unit::start(&queue, &["--timeout", "20s"]).await;
    let taken = Arc::new(AtomicBool::new(false));
    let taken_by_first = Arc::clone(&taken);
    let doomed = Worker::start(&queue, 1, move |_| {
        taken_by_first.store(true, Ordering::SeqCst);
        Behaviour::Die
    })
    .await;
    let mut client = unit.client().await;
    let call = tokio::spawn(async move { client.compute(request(0, b"precious")).await });
    while !taken.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let rescuer = Worker::start(&queue, 1, |r| {
        Behaviour::Reply(success(16, [b"rescued:".to_vec(), r.x].concat()))
    })
    .await;
    let answer = call
        .await
        .expect("call task")
        .expect("answered by the second worker")
        .into_inner();

    assert_eq!(answer.data, Some(Data::Result(b"rescued:precious".to_vec())));
    doomed.stop().await;
    rescuer.stop().await;
    unit.stop().await;
    delete_queue(&queue).await;
}

#[tokio::test]
async fn qstatus_counts_messages_and_consumers() {
    let queue = random_queue();
    let unit = Unit::start(&queue, &["--timeout", "20s"]).await;
    let client = unit.client().await;
    let status = client
        .clone()
        .qstatus(QstatusRequest {})
        .await
        .expect("qstatus")
        .into_inner();
    assert_eq!((status.qlength, status.consumer), (0, 0));

    let calls: Vec<_> = (0..3_u8)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { client.compute(request(0, &[i])).await })
        })
        .collect();
    let mut waiting = (0, 0);
    for _ in 0..100 {
        let status = client
            .clone()
            .qstatus(QstatusRequest {})
            .await
            .expect("qstatus")
            .into_inner();
        waiting = (status.qlength, status.consumer);
        if waiting == (3, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(waiting, (3, 0), "three requests wait, nobody consumes");

    let workers = [
        Worker::start(&queue, 1, |r| Behaviour::Reply(success(16, r.x))).await,
        Worker::start(&queue, 1, |r| Behaviour::Reply(success(16, r.x))).await,
    ];
    for call in calls {
        call.await.expect("call task").expect("answered once workers came");
    }
    let status = client
        .clone()
        .qstatus(QstatusRequest {})
        .await
        .expect("qstatus")
        .into_inner();
    assert_eq!((status.qlength, status.consumer), (0, 2));
    for worker in workers {
        worker.stop().await;
    }
    unit.stop().await;
    delete_queue(&queue).await;
}

#[tokio::test]
async fn oversize_requests_are_refused_before_the_broker() {
    let queue = random_queue();
    let unit = Unit::start(&queue, &["--max-message-bytes", "1000"]).await;
    let status = unit
        .client()
        .await
        .compute(request(0, &[0_u8; 2000]))
        .await
        .expect_err("too large");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    unit.stop().await;
    delete_queue(&queue).await;
}

#[tokio::test]
async fn health_is_not_serving_while_the_broker_is_unreachable() {
    let port = free_port().await;
    let broker = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let config = <transmission_unit::config::Config as clap::Parser>::try_parse_from([
        "transmission-unit",
        "-a",
        &broker,
        "-q",
        "unused",
    ])
    .expect("flags");
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(transmission_unit::server::run(
        listener,
        None,
        config,
        stop.clone().cancelled_owned(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut health = common::health_client(address)
        .await
        .expect("gRPC is up even without a broker");
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "unit.DNet".into(),
        })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(
        answer.status,
        ServingStatus::NotServing as i32,
        "not ready without a broker"
    );
    let server = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(
        server.status,
        ServingStatus::Serving as i32,
        "but alive: no restart for a broker outage"
    );
    let mut client = dnet_proto::DNetClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    let status = client.compute(request(0, b"x")).await.expect_err("no broker");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    stop.cancel();
    task.await.expect("task").expect("clean exit");
}

#[tokio::test]
async fn broker_connection_loss_fails_in_flight_calls_then_recovers() {
    let queue = random_queue();
    let unit = Unit::start(&queue, &["--timeout", "30s"]).await;
    let held = Worker::start(&queue, 10, |_| Behaviour::Hold).await;
    let mut client = unit.client().await;
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        async move { client.compute(request(0, b"in flight")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    close_broker_connection(&format!("transmission-unit {}", unit.name));
    let started = Instant::now();
    let status = in_flight.await.expect("call task").expect_err("connection lost");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    unit.wait_until(ServingStatus::Serving).await;
    held.stop().await;
    let worker = Worker::start(&queue, 10, |r| Behaviour::Reply(success(16, r.x))).await;
    let answer = client
        .compute(request(0, b"after"))
        .await
        .expect("served again")
        .into_inner();
    assert_eq!(answer.data, Some(Data::Result(b"after".to_vec())));
    worker.stop().await;
    unit.stop().await;
    delete_queue(&queue).await;
}

/// Asks the broker to close the connection with this client-provided name.
fn close_broker_connection(name: &str) {
    let listing = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs (the broker of these tests is local)");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let pid = listing
        .lines()
        .filter(|line| line.contains(&format!("\"{name}\"")))
        .find_map(|line| line.split('\t').next().map(str::to_owned))
        .unwrap_or_else(|| panic!("no connection named {name} in:\n{listing}"));
    let closed = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "test closes the connection"])
        .status()
        .expect("rabbitmqctl");
    assert!(closed.success());
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_and_exits_zero() {
    let queue = random_queue();
    let (mut unit, address) = common::spawn_binary(&queue).await;
    let worker = Worker::start(&queue, 10, |r| {
        Behaviour::ReplyAfter(Duration::from_millis(1000), success(16, r.x))
    })
    .await;
    let mut client = dnet_proto::DNetClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    let call = tokio::spawn(async move { client.compute(request(0, b"in flight")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pid = unit.id().expect("pid").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let answer = call
        .await
        .expect("call task")
        .expect("the in-flight call is drained")
        .into_inner();
    assert_eq!(answer.data, Some(Data::Result(b"in flight".to_vec())));
    let exit = tokio::time::timeout(Duration::from_secs(10), unit.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(exit.success(), "{exit:?}");
    worker.stop().await;
    delete_queue(&queue).await;
}
