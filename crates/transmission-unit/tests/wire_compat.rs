//! Compatibility with the original DNet definitions: package `unit`, fields 1-4.

mod common;

use common::{success, Behaviour, Worker};
use dnet_proto::{ComputationRequest, ComputationResponse, Data, HopRecord, StatusCode};
use dnet_testkit::{Broker, TestQueue, TransmissionUnit};
use prost::Message;

/// The original `ComputationMessage.proto`, field for field, as a client
/// generated from it would see the messages.
mod original {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ComputationRequest {
        #[prost(uint64, tag = "1")]
        pub start_layer: u64,
        #[prost(bytes = "vec", tag = "2")]
        pub x: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ComputationResponse {
        #[prost(int32, tag = "1")]
        pub status: i32,
        #[prost(oneof = "Data", tags = "2, 3, 4")]
        pub data: Option<Data>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Data {
        #[prost(string, tag = "2")]
        ErrorMessage(String),
        #[prost(bytes, tag = "3")]
        Result(Vec<u8>),
        #[prost(message, tag = "4")]
        NextRequest(ComputationRequest),
    }
}

#[test]
fn request_bytes_built_by_hand_with_the_original_field_numbers_decode() {
    // field 1 (varint) = 8; field 2 (bytes) = "abc"
    let bytes = [0x08, 0x08, 0x12, 0x03, b'a', b'b', b'c'];
    let request = ComputationRequest::decode(&bytes[..]).expect("decodes");
    assert_eq!(
        request,
        ComputationRequest {
            start_layer: 8,
            x: b"abc".to_vec().into(),
            ..ComputationRequest::default()
        }
    );
    assert_eq!(request.encode_to_vec(), bytes, "and encodes to the same bytes");
}

#[test]
fn original_responses_decode_with_ours() {
    let error = original::ComputationResponse {
        status: 0,
        data: Some(original::Data::ErrorMessage("bad".into())),
    };
    let ours = ComputationResponse::decode(error.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(ours.status, StatusCode::Error as i32);
    assert_eq!(ours.data, Some(Data::ErrorMessage("bad".into())));

    let next = original::ComputationResponse {
        status: 2,
        data: Some(original::Data::NextRequest(original::ComputationRequest {
            start_layer: 10,
            x: vec![1, 2],
        })),
    };
    let ours = ComputationResponse::decode(next.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(ours.status, StatusCode::NotSuccess as i32);
    assert_eq!(
        ours.data,
        Some(Data::NextRequest(ComputationRequest {
            start_layer: 10,
            x: vec![1, 2].into(),
            ..ComputationRequest::default()
        }))
    );
    assert!(ours.hops.is_empty() && ours.exit_layer == 0);
}

#[test]
fn our_responses_decode_with_the_original_definitions() {
    let ours = ComputationResponse {
        status: StatusCode::Success as i32,
        data: Some(Data::Result(vec![7; 5].into())),
        exit_layer: 12,
        confidence: 0.97,
        hops: vec![HopRecord {
            unit: "edge".into(),
            start_layer: 0,
            exit_layer: 12,
            ..HopRecord::default()
        }],
        ..ComputationResponse::default()
    };
    let original = original::ComputationResponse::decode(ours.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(
        original,
        original::ComputationResponse {
            status: 1,
            data: Some(original::Data::Result(vec![7; 5]))
        }
    );
}

#[tokio::test]
async fn a_client_generated_from_the_original_definitions_works_unchanged() {
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = TransmissionUnit::start(&broker, queue.name(), &[])
        .await
        .expect("unit starts");
    let worker = Worker::start(&broker, queue.name(), 10, |r| {
        Behaviour::Reply(success(16, r.x.to_vec()))
    })
    .await;

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", unit.address))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<original::ComputationRequest, original::ComputationResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/unit.DNet/Compute");
    let request = original::ComputationRequest {
        start_layer: 0,
        x: b"from an old client".to_vec(),
    };
    let answer = grpc
        .unary(tonic::Request::new(request), path, codec)
        .await
        .expect("answer")
        .into_inner();

    assert_eq!(
        answer,
        original::ComputationResponse {
            status: 1,
            data: Some(original::Data::Result(b"from an old client".to_vec()))
        }
    );
    worker.stop().await;
}
