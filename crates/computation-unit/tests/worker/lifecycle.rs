//! Lifecycle: SIGTERM finishes the current job and gives the rest back; ready only while consuming.

use dnet_proto::StatusCode;
use dnet_testkit::{wait_for, Broker, ComputationUnit, TestQueue};

use super::support::{images, request};
use super::*;

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
        let forwards = stopping.metrics().await.ok()?.ordinary("dnet_batch_size_count").ok()?;
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
    // The model thread's own account: a request per forward (48 images, the
    // batch limit), so whatever it computed is what the worker must publish.
    let model = stopping.process.events("model thread stopped");
    let model = model
        .first()
        .unwrap_or_else(|| panic!("no model thread stop line in:\n{}", stopping.process.log()));
    let forwards = model["forwards"].as_u64();
    assert!(
        matches!((published, requeued, forwards), (Some(p), Some(r), Some(f)) if p == f && p >= 1 && r >= 1 && p + r == 3),
        "published every request it computed ({model}) and gave the rest back: {summary}"
    );
    let requeued = requeued.unwrap_or_default();

    let successor = worker(&broker, &queue, 16, &[]).await;
    for call in calls {
        let answer = call.await.expect("task").expect("every call answered").into_inner();
        assert_eq!(answer.status, StatusCode::Success as i32);
    }
    let replies = replies_reaching(&[&successor], requeued as f64).await;
    assert_eq!(
        replies,
        [requeued as f64],
        "the successor computed exactly what was given back"
    );
    let metrics = successor.metrics().await.expect("successor metrics");
    assert_eq!(
        metrics.value("dnet_worker_redelivered_total").expect("counter"),
        0.0,
        "given back as fresh copies: a stop is not counted as a crash"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_the_broker_cancels_consumes_again() {
    // Deleting the queue makes RabbitMQ cancel its consumers (basic.cancel,
    // as when a queue moves): the worker declares it again and consumes,
    // without a restart, and answers what is sent to it then.
    let broker = Broker::local();
    let queue = TestQueue::new(&broker);
    let unit = unit(&broker, &queue, &[]).await;
    let mut consumer = worker(&broker, &queue, 16, &[]).await;
    unit.wait_for_consumers(1).await.expect("one consumer");
    broker.delete_queue(queue.name()).expect("delete the queue");
    wait_for("the worker to consume again", PATIENCE, || {
        let sessions = consumer.process.events("consuming").len();
        let counts = broker.queue_counts(queue.name());
        async move { (sessions >= 2 && matches!(counts, Ok(Some((_, _, 1))))).then_some(()) }
    })
    .await
    .expect("consuming again after the cancel");
    let answer = unit
        .client()
        .await
        .expect("client")
        .compute(request(0, &images(1, 7)))
        .await
        .expect("answered after the cancel")
        .into_inner();
    assert_eq!(answer.status, StatusCode::Success as i32);
    assert!(consumer.process.exited().is_none(), "the same process");
}
