//! Poison: a request that stops --max-attempts workers is answered ERROR.

use std::time::Duration;

use dnet_model::codec;
use dnet_proto::{ComputationRequest, Data, StatusCode};
use dnet_testkit::{Broker, TestQueue};
use tch::{Kind, Tensor};

use super::support::{images, request};
use super::*;

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
