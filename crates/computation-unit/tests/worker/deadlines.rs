//! Deadlines: a request past its deadline is acknowledged, not computed.

use std::time::Duration;

use dnet_proto::StatusCode;
use dnet_testkit::{wait_for, Broker, TestQueue};

use super::support::{images, request};
use super::*;

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
    // Each expiry is counted by its delivery's own task, which nothing orders
    // before the replies above; acknowledgements follow the reply's confirm.
    let metrics = wait_for("the worker to count the expired", PATIENCE, || async {
        let metrics = worker.metrics().await.ok()?;
        (metrics.value("dnet_expired_total").ok()? >= 4.0).then_some(metrics)
    })
    .await
    .expect("expired counted");
    assert_eq!(metrics.value("dnet_expired_total").expect("expired"), 4.0);
    assert_eq!(
        metrics.ordinary("dnet_batch_size_sum").expect("batches"),
        49.0,
        "the expired were not computed"
    );
    wait_for("the expired to be acknowledged", PATIENCE, || async {
        (broker.queue_counts(queue.name()).ok()? == Some((0, 0, 1))).then_some(())
    })
    .await
    .expect("the expired were acknowledged");
    let _ = client.connection.close(200, "done".into()).await;
}
