//! Batching: concurrent requests share forward passes.

use dnet_proto::StatusCode;
use dnet_testkit::{Broker, TestQueue};

use super::support::{images, request};
use super::*;

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
    let forwards = metrics.ordinary("dnet_batch_size_count").expect("batch histogram");
    assert_eq!(metrics.ordinary("dnet_batch_size_sum").expect("batch histogram"), 16.0);
    assert!(forwards < 16.0, "16 requests in {forwards} forward passes");
    assert!(batch_sizes.iter().any(|&n| n > 1), "hop records: {batch_sizes:?}");
    assert!(
        batch_sizes.iter().all(|&n| (1..=8).contains(&n)),
        "at most --max-batch-size: {batch_sizes:?}"
    );
}
