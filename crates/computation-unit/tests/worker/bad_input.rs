//! Bad input: every bad request answered ERROR naming it (through gRPC and straight onto the queue), a malformed message refused, limits that do not compose refused at start.

use std::time::Duration;

use dnet_model::codec;
use dnet_proto::{ComputationRequest, ComputationResponse, Data, StatusCode};
use dnet_testkit::{Broker, ComputationUnit, TestQueue};
use tch::{Kind, Tensor};

use super::support::{images, request};
use super::*;

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
async fn bad_messages_straight_onto_the_queue_get_errors_or_are_dropped_and_the_worker_keeps_serving() {
    use lapin::BasicProperties;
    use prost::Message;

    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let _unit = unit(&broker, &queue, &[]).await;
    let worker = worker(&broker, &queue, 8, &["--max-request-samples", "2"]).await;
    let queue = queue.name();

    let mut client = RawClient::new(&broker).await;
    let channel = &client.channel;
    let with_reply = |id: &str| {
        BasicProperties::default()
            .with_reply_to(client.reply_to.as_str().into())
            .with_correlation_id(id.into())
    };

    // Dropped (nobody could receive an answer): no reply_to, no correlation id.
    let good = request(0, &images(1, 9)).encode_to_vec();
    publish_raw(
        channel,
        queue,
        &good,
        BasicProperties::default().with_correlation_id("no-reply-to".into()),
    )
    .await;
    publish_raw(
        channel,
        queue,
        &good,
        BasicProperties::default().with_reply_to(client.reply_to.as_str().into()),
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
        publish_raw(channel, queue, body, with_reply(id)).await;
    }
    publish_raw(channel, queue, &good, with_reply("good")).await;

    let mut answers = std::collections::HashMap::new();
    while answers.len() < cases.len() + 1 {
        let (id, response) = client
            .reply(Duration::from_secs(30))
            .await
            .expect("every answerable message is answered, with a correlation id and a ComputationResponse");
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
    // The two that nobody could answer were settled, not left held: the
    // broker holds nothing for the queue (the last reply's acknowledgement
    // may still be on its way), and the worker counted both.
    wait_for("the broker to hold nothing for the queue", PATIENCE, || async {
        (broker.queue_counts(queue).ok()? == Some((0, 0, 1))).then_some(())
    })
    .await
    .expect("nothing ready, nothing unacknowledged, the worker still consumes");
    assert_eq!(
        worker
            .metrics()
            .await
            .expect("metrics")
            .value("dnet_worker_unanswerable_total")
            .expect("counter"),
        2.0,
        "both requests without a reply_to or correlation id dropped and counted"
    );
    let _ = client.connection.close(200, "done".into()).await;
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
