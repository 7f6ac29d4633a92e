//! The computation unit (its binary) on the real broker, behind real transmission units.

mod support;

use std::time::Duration;

use dnet_model::codec;
use dnet_proto::{ComputationRequest, ComputationResponse, Data, StatusCode};
use dnet_testkit::{wait_for, Broker, ComputationUnit, TestQueue, TransmissionUnit};
use support::{images, infer, request, result_tensors, thresholds};
use tch::{Kind, Tensor};

const SEED: u64 = 11;
/// How long a test waits for a state it needs before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

async fn unit(broker: &Broker, queue: &TestQueue, extra: &[&str]) -> TransmissionUnit {
    TransmissionUnit::start(broker, queue.name(), extra)
        .await
        .expect("transmission unit starts")
}

async fn worker(broker: &Broker, queue: &TestQueue, exit: u8, extra: &[&str]) -> ComputationUnit {
    ComputationUnit::start(broker, queue.name(), exit, SEED, extra)
        .await
        .expect("computation unit starts")
}

/// Waits until `calls` requests are published (the unit waits for their
/// replies) and the queue has nothing ready and one consumer: the worker
/// holds them all.
async fn wait_for_taken(unit: &TransmissionUnit, calls: u32) {
    wait_for("the worker to take every request", PATIENCE, || async {
        let published = unit.metrics().await.ok()?.value("dnet_pending_replies").ok()?;
        (published == f64::from(calls) && unit.qstatus().await.ok()? == (0, 1)).then_some(())
    })
    .await
    .expect("taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_the_thresholds_exactly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let x = images(2, 1);
    let reference = infer(dir.path(), &x, SEED, 0, 8);
    let confidence = reference["confidence"].min().double_value(&[]);

    for (threshold, expected) in [
        (confidence - 1e-4, StatusCode::Success),
        (confidence + 1e-4, StatusCode::NotSuccess),
    ] {
        let broker = Broker::local();
        let queue = TestQueue::new(&broker);
        let unit = unit(&broker, &queue, &["--timeout", "60s"]).await;
        let _worker = worker(&broker, &queue, 8, &["--thresholds", &thresholds(threshold)]).await;

        let answer = unit
            .client()
            .await
            .expect("client")
            .compute(request(0, &x))
            .await
            .expect("answer")
            .into_inner();

        assert_eq!(
            answer.status, expected as i32,
            "threshold {threshold} vs confidence {confidence}"
        );
        assert!((f64::from(answer.confidence) - confidence).abs() < 1e-6);
        match expected {
            StatusCode::Success => {
                let result = result_tensors(&answer);
                assert!(result["probs"].allclose(&reference["probs"], 1e-5, 1e-6, false));
                assert!(result["category"].equal(&reference["category"]));
                assert_eq!(answer.exit_layer, 8);
            }
            _ => {
                let Some(Data::NextRequest(next)) = &answer.data else {
                    panic!("no next request")
                };
                assert_eq!(next.start_layer, 8);
                let trunk = codec::decode_x(&next.x, 8, 64).expect("a valid layer-8 tensor");
                assert!(trunk.allclose(&reference["x"], 1e-5, 1e-6, false));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_unit_cascade_answers_what_infer_gives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let x = images(1, 2);
    let reference = infer(dir.path(), &x, SEED, 0, 16);
    let broker = Broker::local();
    let queues = [
        TestQueue::new(&broker),
        TestQueue::new(&broker),
        TestQueue::new(&broker),
    ];
    let never = thresholds(1.0);
    let _workers = futures::future::join3(
        worker(&broker, &queues[0], 8, &["--thresholds", &never]),
        worker(&broker, &queues[1], 12, &["--thresholds", &never]),
        worker(&broker, &queues[2], 16, &[]),
    )
    .await;
    let last = unit(&broker, &queues[2], &["--timeout", "60s"]).await;
    let middle = unit(&broker, &queues[1], &["--timeout", "60s", "-n", &last.endpoint()]).await;
    let first = unit(&broker, &queues[0], &["--timeout", "60s", "-n", &middle.endpoint()]).await;

    let answer = first
        .client()
        .await
        .expect("client")
        .compute(request(0, &x))
        .await
        .expect("answer")
        .into_inner();

    assert_eq!(answer.status, StatusCode::Success as i32);
    assert_eq!(answer.exit_layer, 16);
    let layers: Vec<(u64, u64)> = answer.hops.iter().map(|h| (h.start_layer, h.exit_layer)).collect();
    assert_eq!(layers, vec![(0, 8), (8, 12), (12, 16)]);
    assert!(answer.hops.iter().all(|h| h.compute_us > 0));
    let result = result_tensors(&answer);
    assert!(result["category"].equal(&reference["category"]));
    assert!(
        result["probs"].allclose(&reference["probs"], 1e-5, 1e-6, false),
        "cascade == infer 0->16"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_queue_share_the_load() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--timeout", "60s"]).await;
    let (first, second) = futures::future::join(
        worker(&broker, &queue, 4, &["--prefetch", "1"]),
        worker(&broker, &queue, 4, &["--prefetch", "1"]),
    )
    .await;
    let client = unit.client().await.expect("client");

    let calls = (0..8).map(|i| {
        let mut client = client.clone();
        let x = images(4, 100 + i);
        tokio::spawn(async move { client.compute(request(0, &x)).await })
    });
    for call in futures::future::join_all(calls).await {
        let answer = call.expect("task").expect("answer").into_inner();
        assert_ne!(answer.status, StatusCode::Error as i32);
    }

    let mut replies = Vec::new();
    for worker in [&first, &second] {
        let metrics = worker.metrics().await.expect("worker metrics");
        replies.push(metrics.sum("dnet_worker_replies_total").expect("replies counter"));
    }
    assert_eq!(replies.iter().sum::<f64>(), 8.0, "{replies:?}");
    assert!(replies.iter().all(|&n| n > 0.0), "both workers answered: {replies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_mid_request_loses_nothing() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--timeout", "120s"]).await;
    let mut doomed = worker(&broker, &queue, 16, &["--prefetch", "1"]).await;

    // A large batch keeps the worker busy for a while.
    let x = images(48, 3);
    let mut client = unit.client().await.expect("client");
    let call = tokio::spawn({
        let request = request(0, &x);
        async move { client.compute(request).await }
    });
    wait_for_taken(&unit, 1).await;
    doomed.process.kill();

    let rescuer = worker(&broker, &queue, 16, &[]).await;
    let answer = call
        .await
        .expect("task")
        .expect("answered by the second worker")
        .into_inner();
    assert_eq!(answer.status, StatusCode::Success as i32);
    assert_eq!(result_tensors(&answer)["category"].size(), vec![48]);
    let rescued = rescuer.metrics().await.expect("rescuer metrics");
    assert_eq!(
        rescued.value("dnet_worker_redelivered_total").expect("counter"),
        1.0,
        "the broker redelivered it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_an_error_naming_it_and_the_worker_keeps_serving() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--timeout", "60s"]).await;
    let _worker = worker(&broker, &queue, 8, &[]).await;
    let mut client = unit.client().await.expect("client");

    let good = codec::encode_x(&images(1, 4)).expect("encode");
    let pickle = vec![
        0x80, 0x04, 0x95, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x8c, 0x05, b't', b'o', b'r', b'c', b'h',
    ];
    let wrong_shape = codec::encode_x(&Tensor::zeros([1, 3, 28, 28], (Kind::Float, tch::Device::Cpu))).expect("encode");
    let wrong_rank = codec::encode_x(&Tensor::zeros([3, 32, 32], (Kind::Float, tch::Device::Cpu))).expect("encode");
    let integers = codec::encode_x(&Tensor::zeros([1, 3, 32, 32], (Kind::Int64, tch::Device::Cpu))).expect("encode");
    let nan = codec::encode_x(&images(1, 5).fill_(f64::NAN)).expect("encode");
    let cases: Vec<(&str, u64, Vec<u8>, &str)> = vec![
        ("pickle", 0, pickle, "pickle"),
        (
            "garbage",
            0,
            b"certainly not a tensor".to_vec(),
            "not a valid safetensors",
        ),
        ("empty", 0, Vec::new(), "empty"),
        (
            "truncated",
            0,
            good[..good.len() / 2].to_vec(),
            "not a valid safetensors",
        ),
        ("wrong shape", 0, wrong_shape, "[N, 3, 32, 32]"),
        ("wrong rank", 0, wrong_rank, "rank 3"),
        ("integer dtype", 0, integers, "dtype I64"),
        ("NaN", 0, nan, "NaN"),
        ("start_layer >= exit", 8, good.clone(), "0 <= start_layer < 8"),
        ("absurd start_layer", u64::MAX, good.clone(), "out of range"),
    ];
    for (what, start_layer, x, expected) in cases {
        let answer = client
            .compute(ComputationRequest {
                start_layer,
                x: x.into(),
                ..ComputationRequest::default()
            })
            .await
            .expect("answered")
            .into_inner();
        assert_eq!(answer.status, StatusCode::Error as i32, "{what}");
        let Some(Data::ErrorMessage(message)) = &answer.data else {
            panic!("{what}: no error message")
        };
        assert!(message.contains(expected), "{what}: {message}");
    }

    let answer = client
        .compute(ComputationRequest {
            start_layer: 0,
            x: good.into(),
            ..ComputationRequest::default()
        })
        .await
        .expect("answered")
        .into_inner();
    assert_ne!(
        answer.status,
        StatusCode::Error as i32,
        "the next good request is answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_current_job_requeues_the_rest_and_exits_zero() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--timeout", "120s"]).await;
    // One request per forward pass, each long enough to stop in the middle of.
    let mut stopping = worker(&broker, &queue, 16, &["--prefetch", "3", "--max-batch-size", "48"]).await;
    let client = unit.client().await.expect("client");
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let mut client = client.clone();
            let request = request(0, &images(48, 200 + i));
            tokio::spawn(async move { client.compute(request).await })
        })
        .collect();
    wait_for_taken(&unit, 3).await;
    // SIGTERM while a forward runs: the first has finished, the second is
    // under way (each takes a while: 48 images on one thread). Right after
    // the deliveries arrive, none may have reached the model yet.
    wait_for("the first forward to finish", PATIENCE, || async {
        let forwards = stopping.metrics().await.ok()?.value("dnet_batch_size_count").ok()?;
        (forwards >= 1.0).then_some(())
    })
    .await
    .expect("a forward finished");

    stopping.process.signal("TERM").expect("SIGTERM");
    let exit = stopping.process.wait_exit(PATIENCE).await.expect("exits");
    assert!(exit.success(), "{exit:?}");
    // What the worker itself did, from its own account: the broker would
    // requeue the unacked requests of a worker that did nothing, so the
    // count of nacks it sent is the proof.
    let summary = stopping.process.events("computation unit stopped");
    let summary = summary
        .first()
        .unwrap_or_else(|| panic!("no stop summary in:\n{}", stopping.process.log()));
    let (published, requeued) = (summary["published"].as_u64(), summary["requeued"].as_u64());
    assert!(
        matches!((published, requeued), (Some(p), Some(r)) if p >= 1 && r >= 1 && p + r == 3),
        "finished at least the current one and gave the rest back: {summary}"
    );
    let requeued = requeued.unwrap_or_default();

    let successor = worker(&broker, &queue, 16, &[]).await;
    for call in calls {
        let answer = call.await.expect("task").expect("every call answered").into_inner();
        assert_eq!(answer.status, StatusCode::Success as i32);
    }
    let metrics = successor.metrics().await.expect("successor metrics");
    assert_eq!(
        metrics.sum("dnet_worker_replies_total").expect("replies"),
        requeued as f64,
        "the successor computed exactly what was given back"
    );
    assert_eq!(
        metrics.value("dnet_worker_redelivered_total").expect("counter"),
        0.0,
        "given back as fresh copies: a stop is not counted as a crash"
    );
}

/// Publishes `body` straight onto `queue` with the given properties.
async fn publish_raw(channel: &lapin::Channel, queue: &str, body: &[u8], properties: lapin::BasicProperties) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_straight_onto_the_queue_get_errors_or_are_dropped_and_the_worker_keeps_serving() {
    use futures::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use lapin::BasicProperties;
    use prost::Message;

    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &[]).await;
    let _worker = worker(&broker, &queue, 8, &["--max-request-samples", "2"]).await;
    let queue = queue.name();

    let connection = lapin::Connection::connect(&broker.uri, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let replies = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("reply queue");
    let mut consumer = channel
        .basic_consume(
            replies.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume replies");
    let with_reply = |id: &str| {
        BasicProperties::default()
            .with_reply_to(replies.name().clone())
            .with_correlation_id(id.into())
    };

    // Dropped (nobody could receive an answer): no reply_to, no correlation id.
    let good = request(0, &images(1, 9)).encode_to_vec();
    publish_raw(
        &channel,
        queue,
        &good,
        BasicProperties::default().with_correlation_id("no-reply-to".into()),
    )
    .await;
    publish_raw(
        &channel,
        queue,
        &good,
        BasicProperties::default().with_reply_to(replies.name().clone()),
    )
    .await;
    // Answered with ERROR: malformed protobuf, oversize x, absurd start_layer.
    let oversize = request(0, &images(3, 9)).encode_to_vec();
    let absurd = ComputationRequest {
        start_layer: 1 << 60,
        x: codec::encode_x(&images(1, 9)).expect("encode").into(),
        ..ComputationRequest::default()
    }
    .encode_to_vec();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "malformed",
            vec![0x0a, 0xff, 0xff, 0x01, 0x02],
            "not a serialized ComputationRequest",
        ),
        ("oversize", oversize, "at most 2"),
        ("absurd", absurd, "out of range"),
    ];
    for (id, body, _) in &cases {
        publish_raw(&channel, queue, body, with_reply(id)).await;
    }
    publish_raw(&channel, queue, &good, with_reply("good")).await;

    let mut answers = std::collections::HashMap::new();
    while answers.len() < cases.len() + 1 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("every answerable message is answered")
            .expect("stream")
            .expect("delivery");
        let id = delivery
            .properties
            .correlation_id()
            .clone()
            .expect("correlation id")
            .to_string();
        let response = ComputationResponse::decode(delivery.data.as_slice()).expect("a ComputationResponse");
        assert!(answers.insert(id, response).is_none(), "answered once");
    }
    for (id, _, expected) in &cases {
        let response = &answers[*id];
        assert_eq!(response.status, StatusCode::Error as i32, "{id}");
        let Some(Data::ErrorMessage(message)) = &response.data else {
            panic!("{id}: no message")
        };
        assert!(message.contains(expected), "{id}: {message}");
    }
    assert_ne!(
        answers["good"].status,
        StatusCode::Error as i32,
        "the good request is answered"
    );
    assert!(!answers.contains_key("no-reply-to"));
    assert_eq!(
        unit.qstatus().await.expect("qstatus"),
        (0, 1),
        "nothing left behind, the worker still consumes"
    );
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_grpc_message_is_refused_and_the_unit_keeps_serving() {
    /// A message that puts bytes where ComputationRequest has a varint.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Malformed {
        #[prost(bytes = "vec", tag = "1")]
        start_layer: Vec<u8>,
    }
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &[]).await;
    let _worker = worker(&broker, &queue, 8, &[]).await;

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", unit.address))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<Malformed, ComputationResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/unit.DNet/Compute");
    let status = grpc
        .unary(
            tonic::Request::new(Malformed {
                start_layer: vec![1, 2, 3],
            }),
            path,
            codec,
        )
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");

    let answer = unit
        .client()
        .await
        .expect("client")
        .compute(request(0, &images(1, 10)))
        .await
        .expect("still serving")
        .into_inner();
    assert_ne!(answer.status, StatusCode::Error as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_the_broker_refuses_puts_the_request_back_instead_of_losing_it() {
    use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use prost::Message;

    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    // A reply queue that refuses every message: the broker nacks the reply.
    let full = TestQueue::new(&broker);
    let mut refusing = worker(&broker, &queue, 8, &[]).await;
    let connection = lapin::Connection::connect(&broker.uri, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(0));
    arguments.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    channel
        .queue_declare(full.name().into(), QueueDeclareOptions::default(), arguments)
        .await
        .expect("declare the full reply queue");

    let body = request(0, &images(1, 12)).encode_to_vec();
    let properties = lapin::BasicProperties::default()
        .with_reply_to(full.name().into())
        .with_correlation_id("refused".into());
    publish_raw(&channel, queue.name(), &body, properties).await;
    wait_for(
        "the worker to see its reply refused and give the request back",
        PATIENCE,
        || async {
            let metrics = refusing.metrics().await.ok()?;
            let refused = metrics.value("dnet_worker_unpublished_replies_total").ok()?;
            let requeued = metrics.value("dnet_worker_requeued_total").ok()?;
            (refused >= 1.0 && requeued >= 1.0).then_some(())
        },
    )
    .await
    .expect("refused and requeued");
    let published = refusing
        .metrics()
        .await
        .expect("metrics")
        .sum("dnet_worker_replies_total")
        .expect("replies");
    assert_eq!(published, 0.0, "a refused reply is not counted as published");

    refusing.process.kill();
    // Back in the queue, not lost (a copy put back just before the kill, with
    // its original not yet acknowledged, can make it two: harmless).
    wait_for("the request to wait in the queue again", PATIENCE, || async {
        let (ready, unacked, consumers) = broker.queue_counts(queue.name()).ok()??;
        (ready >= 1 && unacked == 0 && consumers == 0).then_some(())
    })
    .await
    .expect("the request is not lost");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_run_in_shared_forward_passes() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &["--timeout", "60s"]).await;
    let worker = worker(&broker, &queue, 8, &["--max-batch-size", "8"]).await;
    let client = unit.client().await.expect("client");
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let mut client = client.clone();
            let request = request(0, &images(1, 300 + i));
            tokio::spawn(async move { client.compute(request).await })
        })
        .collect();
    let mut batch_sizes = Vec::new();
    for call in calls {
        let answer = call.await.expect("task").expect("answered").into_inner();
        assert_ne!(answer.status, StatusCode::Error as i32);
        batch_sizes.push(answer.hops[0].batch_size);
    }
    let metrics = worker.metrics().await.expect("worker metrics");
    let forwards = metrics.value("dnet_batch_size_count").expect("batch histogram");
    assert_eq!(metrics.value("dnet_batch_size_sum").expect("batch histogram"), 16.0);
    assert!(forwards < 16.0, "16 requests in {forwards} forward passes");
    assert!(batch_sizes.iter().any(|&n| n > 1), "hop records: {batch_sizes:?}");
    assert!(
        batch_sizes.iter().all(|&n| (1..=8).contains(&n)),
        "at most --max-batch-size: {batch_sizes:?}"
    );
}

/// A connection, a channel with confirms, and an exclusive reply queue with
/// its consumer: publishing raw requests and reading their replies.
struct RawClient {
    connection: lapin::Connection,
    channel: lapin::Channel,
    reply_to: String,
    replies: lapin::Consumer,
}

impl RawClient {
    async fn new(broker: &Broker) -> RawClient {
        use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions, QueueDeclareOptions};
        let connection = lapin::Connection::connect(&broker.uri, lapin::ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let replies = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("reply queue");
        let reply_to = replies.name().to_string();
        let replies = channel
            .basic_consume(
                reply_to.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("consume replies");
        RawClient {
            connection,
            channel,
            reply_to,
            replies,
        }
    }

    /// Publishes `body` to `queue` with this client's reply queue, `id` and `headers`.
    async fn send(&self, queue: &TestQueue, body: &[u8], id: &str, headers: lapin::types::FieldTable) {
        let properties = lapin::BasicProperties::default()
            .with_reply_to(self.reply_to.as_str().into())
            .with_correlation_id(id.into())
            .with_headers(headers);
        publish_raw(&self.channel, queue.name(), body, properties).await;
    }

    /// The next reply's correlation id and response, if one comes within `limit`.
    async fn reply(&mut self, limit: Duration) -> Option<(String, ComputationResponse)> {
        use futures::StreamExt;
        use prost::Message;
        let delivery = tokio::time::timeout(limit, self.replies.next()).await.ok()??.ok()?;
        let id = delivery.properties.correlation_id().clone()?.to_string();
        Some((id, ComputationResponse::decode(delivery.data.as_slice()).ok()?))
    }
}

/// Milliseconds since the Unix epoch, `offset_ms` from now.
fn unix_ms_from_now(offset_ms: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    now + offset_ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_their_deadline_are_skipped_not_computed() {
    use prost::Message;
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let worker = worker(&broker, &queue, 16, &["--max-batch-size", "48"]).await;
    let mut client = RawClient::new(&broker).await;
    let none = lapin::types::FieldTable::default();

    // Past already when it arrives.
    let stale = dnet_amqp::deadline::headers_due_at(unix_ms_from_now(-1000));
    client
        .send(&queue, &request(0, &images(1, 20)).encode_to_vec(), "stale", stale)
        .await;
    // A long forward first; the next requests expire while they wait behind it.
    client
        .send(
            &queue,
            &request(0, &images(48, 21)).encode_to_vec(),
            "long",
            none.clone(),
        )
        .await;
    for i in 0..3 {
        let soon = dnet_amqp::deadline::headers_due_at(unix_ms_from_now(150));
        client
            .send(
                &queue,
                &request(0, &images(1, 22 + i)).encode_to_vec(),
                &format!("soon-{i}"),
                soon,
            )
            .await;
    }
    client
        .send(&queue, &request(0, &images(1, 30)).encode_to_vec(), "no deadline", none)
        .await;

    let mut answered = Vec::new();
    while let Some((id, response)) = client.reply(Duration::from_secs(10)).await {
        assert_eq!(response.status, StatusCode::Success as i32, "{id}");
        answered.push(id);
        if answered.len() == 2 {
            break;
        }
    }
    answered.sort();
    assert_eq!(
        answered,
        ["long", "no deadline"],
        "only the requests someone waits for are answered"
    );
    let metrics = worker.metrics().await.expect("metrics");
    assert_eq!(metrics.value("dnet_expired_total").expect("expired"), 4.0);
    assert_eq!(
        metrics.value("dnet_batch_size_sum").expect("batches"),
        49.0,
        "the expired were not computed"
    );
    assert_eq!(
        broker.queue_counts(queue.name()).expect("rabbitmqctl"),
        Some((0, 0, 1)),
        "the expired were acknowledged"
    );
    let _ = client.connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_stops_max_attempts_workers_is_answered_error_and_the_others_are_answered() {
    use prost::Message;
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    // Each worker aborts on a request of start layer 3, as if it killed them.
    // One request held at a time: a worker that dies takes nothing else with it
    // (requests held beside a poison count its victims too: docs/architecture.md).
    let trigger = [
        "--test-exit-on-start-layer",
        "3",
        "--max-attempts",
        "2",
        "--prefetch",
        "1",
    ];
    // The first worker declares the queue before anything is sent to it.
    let mut current = worker(&broker, &queue, 8, &trigger).await;
    let mut client = RawClient::new(&broker).await;
    let none = lapin::types::FieldTable::default();
    let poison = ComputationRequest {
        start_layer: 3,
        x: codec::encode_x(&Tensor::zeros([1, 64, 28, 28], (Kind::Float, tch::Device::Cpu)))
            .expect("encode")
            .into(),
        ..ComputationRequest::default()
    };
    client
        .send(&queue, &poison.encode_to_vec(), "poison", none.clone())
        .await;
    client
        .send(&queue, &request(0, &images(1, 40)).encode_to_vec(), "good", none)
        .await;

    // Workers are restarted as they die, as an orchestrator would.
    let mut exited = 0;
    let mut answers = std::collections::HashMap::new();
    while answers.len() < 2 {
        if let Some((id, response)) = client.reply(Duration::from_millis(200)).await {
            answers.insert(id, response);
        } else if current.process.exited().is_some() {
            exited += 1;
            assert!(exited <= 2, "more workers stopped than --max-attempts allows");
            current = worker(&broker, &queue, 8, &trigger).await;
        }
    }
    assert_eq!(exited, 2, "the request stopped two workers");
    let poisoned = &answers["poison"];
    assert_eq!(poisoned.status, StatusCode::Error as i32);
    let Some(Data::ErrorMessage(message)) = &poisoned.data else {
        panic!("no message")
    };
    assert!(message.contains("stopped 2 workers"), "{message}");
    assert_ne!(
        answers["good"].status,
        StatusCode::Error as i32,
        "the other request is answered"
    );
    let metrics = current.metrics().await.expect("metrics");
    assert_eq!(metrics.value("dnet_worker_poisoned_total").expect("poisoned"), 1.0);
    let _ = client.connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_whose_message_limit_cannot_hold_its_largest_request_does_not_start() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    // 663,552 bytes per sample at exit 8: 64 samples (the default
    // --max-request-samples) do not fit 1 MB; one does.
    let mut refused = ComputationUnit::launch(&broker, queue.name(), 8, SEED, &["--max-message-bytes", "1000000"])
        .await
        .map(|unit| unit.process)
        .err()
        .map(|error| error.to_string())
        .expect("does not start");
    refused.truncate(4000);
    assert!(
        refused.contains("--max-request-samples 64") && refused.contains("lower --max-request-samples to 1"),
        "names both flags and what fits: {refused}"
    );
    let fits = ["--max-message-bytes", "1000000", "--max-request-samples", "1"];
    let _worker = worker(&broker, &queue, 8, &fits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_is_ready_only_while_it_consumes() {
    use dnet_testkit::metrics::http_status;
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let nowhere = format!("amqp://guest:guest@127.0.0.1:{}/%2f", dnet_testkit::free_port());
    let lonely = ComputationUnit::launch(&broker, queue.name(), 8, SEED, &["-a", &nowhere])
        .await
        .expect("starts without a broker");
    assert_eq!(http_status(lonely.metrics_address, "/livez").await.expect("probe"), 200);
    assert_eq!(
        http_status(lonely.metrics_address, "/readyz").await.expect("probe"),
        503,
        "model loaded but no queue to consume: not ready"
    );
    let consuming = worker(&broker, &queue, 8, &[]).await;
    assert_eq!(
        http_status(consuming.metrics_address, "/readyz").await.expect("probe"),
        200
    );
}
