//! Traces across the chain: a call through the cascade 8 -> 12 -> 16, every
//! program exporting to an OTLP receiver (`--otlp-endpoint`), is one trace
//! whose spans nest as the hops did, in the caller's trace when it sent a
//! `traceparent` and in a trace of its own when it did not; the queue waits
//! and the forward passes the spans show are those of the answer's hop
//! records, within 1 ms, the model wait and forward pass inside the
//! computation. In both layouts: through RabbitMQ (the context in
//! the messages' headers) and between direct units (gRPC metadata only).

mod support;

use std::time::Duration;

use dnet_proto::{HopRecord, StatusCode};
use dnet_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use dnet_testkit::{Broker, ComputationUnit, TestQueue, TransmissionUnit};
use support::{images, request, thresholds};

const SEED: u64 = 5;
/// Spans are exported in batches, every few seconds.
const PATIENCE: Duration = Duration::from_secs(60);
/// How far a span may be from the hop record measuring the same thing.
const WITHIN: Duration = Duration::from_millis(1);
/// A caller's trace: W3C trace id and the caller's own span id.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_broker_cascade_is_one_trace_nesting_as_its_hops() {
    let receiver = OtlpReceiver::start().await.expect("an OTLP receiver");
    let otlp = receiver.endpoint();
    let broker = Broker::local();
    let queues: Vec<TestQueue> = (0..3).map(|_| TestQueue::new(&broker)).collect();
    let never = thresholds(1.0);
    let mut workers = Vec::new();
    for (queue, exit) in queues.iter().zip([8, 12, 16]) {
        let flags = ["--thresholds", never.as_str(), "--otlp-endpoint", otlp.as_str()];
        workers.push(
            ComputationUnit::start(&broker, queue.name(), exit, SEED, &flags)
                .await
                .expect("worker starts"),
        );
    }
    let mut units: Vec<TransmissionUnit> = Vec::new();
    for queue in queues.iter().rev() {
        let mut flags = vec!["--otlp-endpoint".to_owned(), otlp.clone()];
        if let Some(next) = units.last() {
            flags.extend(["-n".to_owned(), next.endpoint()]);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        units.push(
            TransmissionUnit::start(&broker, queue.name(), &flags)
                .await
                .expect("transmission unit starts"),
        );
    }
    let first = units.last().expect("unit 8");

    check_both_starting_points(first, &receiver, Layout::Broker).await;
    drop(units);
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_direct_units_is_one_trace_nesting_as_its_hops() {
    let receiver = OtlpReceiver::start().await.expect("an OTLP receiver");
    let otlp = receiver.endpoint();
    let never = thresholds(1.0);
    let last = TransmissionUnit::direct(16, SEED, &["--otlp-endpoint", &otlp])
        .await
        .expect("unit 16 starts");
    let middle = TransmissionUnit::direct(
        12,
        SEED,
        &["--otlp-endpoint", &otlp, "--thresholds", &never, "-n", &last.endpoint()],
    )
    .await
    .expect("unit 12 starts");
    let first = TransmissionUnit::direct(
        8,
        SEED,
        &[
            "--otlp-endpoint",
            &otlp,
            "--thresholds",
            &never,
            "-n",
            &middle.endpoint(),
        ],
    )
    .await
    .expect("unit 8 starts");

    check_both_starting_points(&first, &receiver, Layout::Direct).await;
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// A transmission unit and a worker per exit: `dnet.queue` between them.
    Broker,
    /// One direct unit per exit.
    Direct,
}

/// A call in the caller's trace, then one without a trace context.
async fn check_both_starting_points(first: &TransmissionUnit, receiver: &OtlpReceiver, layout: Layout) {
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let hops = call(first, Some(&traceparent)).await;
    let spans = whole_trace(receiver, CALLER_TRACE, layout).await;
    check_nesting(&spans, CALLER_SPAN, &hops, layout);
    println!("trace {CALLER_TRACE}:\n{}", tree(&spans, CALLER_SPAN, 0));

    let hops = call(first, None).await;
    let root = wait_for_new_root(receiver, &hops[0].unit).await;
    assert_ne!(root.trace_id, CALLER_TRACE);
    let spans = whole_trace(receiver, &root.trace_id, layout).await;
    check_nesting(&spans, "", &hops, layout);
}

/// One image through the cascade; its hop records (three: every unit).
async fn call(first: &TransmissionUnit, traceparent: Option<&str>) -> Vec<HopRecord> {
    let mut call = tonic::Request::new(request(0, &images(1, 3)));
    if let Some(traceparent) = traceparent {
        call.metadata_mut()
            .insert("traceparent", traceparent.parse().expect("ASCII"));
    }
    let answer = first
        .client()
        .await
        .expect("client")
        .compute(call)
        .await
        .expect("an answer")
        .into_inner();
    assert_eq!(answer.status, StatusCode::Success as i32, "{answer:?}");
    assert_eq!(
        answer.hops.iter().map(|h| h.exit_layer).collect::<Vec<_>>(),
        [8, 12, 16],
        "thresholds 1 hand every sample on to exit 16"
    );
    answer.hops
}

/// Every span of `trace_id` the call makes, once exported.
async fn whole_trace(receiver: &OtlpReceiver, trace_id: &str, layout: Layout) -> Vec<ReceivedSpan> {
    let mut expected = vec!["dnet.unit", "dnet.computation", "dnet.model_wait", "dnet.forward"];
    if layout == Layout::Broker {
        expected.push("dnet.queue");
    }
    receiver
        .trace(trace_id, PATIENCE, |spans| {
            expected
                .iter()
                .all(|name| spans.iter().filter(|s| s.name == *name).count() == 3)
        })
        .await
        .expect("every span of the call")
}

/// The `dnet.unit` span of a trace other than the caller's, at unit `unit`.
async fn wait_for_new_root(receiver: &OtlpReceiver, unit: &str) -> ReceivedSpan {
    dnet_testkit::wait_for("a new trace's root span", PATIENCE, || async {
        receiver
            .spans()
            .into_iter()
            .find(|s| s.name == "dnet.unit" && s.trace_id != CALLER_TRACE && s.attribute("dnet.unit") == Some(unit))
    })
    .await
    .expect("the second call's root span")
}

/// The spans nest as the hops went: each unit's call inside the previous
/// one's (the first inside `root`), its queue round trip (broker) inside
/// it, the computation inside that, its forward pass inside the
/// computation; and they show the hop records' times.
fn check_nesting(spans: &[ReceivedSpan], root: &str, hops: &[HopRecord], layout: Layout) {
    let child = |parent: &str, name: &str| -> ReceivedSpan {
        let found: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.name == name && s.parent_span_id == parent)
            .collect();
        assert_eq!(found.len(), 1, "one {name} under {parent}: {spans:#?}");
        found[0].clone()
    };
    let mut parent = root.to_owned();
    for hop in hops {
        let unit = child(&parent, "dnet.unit");
        assert_eq!(unit.attribute("dnet.unit"), Some(hop.unit.as_str()), "{unit:?}");
        assert_eq!(
            unit.attribute("dnet.start_layer"),
            Some(hop.start_layer.to_string().as_str())
        );
        let queue = (layout == Layout::Broker).then(|| child(&unit.span_id, "dnet.queue"));
        let computation = child(&queue.as_ref().unwrap_or(&unit).span_id, "dnet.computation");
        assert_eq!(
            computation.attribute("dnet.exit_layer"),
            Some(hop.exit_layer.to_string().as_str())
        );
        assert_eq!(
            computation.attribute("dnet.batch_size"),
            Some(hop.batch_size.to_string().as_str())
        );
        let forward = child(&computation.span_id, "dnet.forward");
        near(
            forward.duration(),
            Duration::from_micros(hop.compute_us),
            "forward pass",
            hop,
        );
        // The model wait, then the forward pass, inside the computation.
        let model_wait = child(&computation.span_id, "dnet.model_wait");
        assert!(
            computation.start_unix_nano <= model_wait.start_unix_nano
                && model_wait.end_unix_nano == forward.start_unix_nano
                && forward.end_unix_nano <= computation.end_unix_nano,
            "{computation:?}\n{model_wait:?}\n{forward:?}"
        );
        if let Some(queue) = queue {
            let waited = queue.duration().saturating_sub(forward.duration());
            near(waited, Duration::from_micros(hop.queue_wait_us), "queue wait", hop);
        }
        parent = unit.span_id;
    }
}

/// The spans under `parent` as an indented tree, in start order.
fn tree(spans: &[ReceivedSpan], parent: &str, depth: usize) -> String {
    let mut children: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.parent_span_id == parent).collect();
    children.sort_by_key(|s| s.start_unix_nano);
    let mut text = String::new();
    for span in children {
        let unit = span
            .attribute("dnet.unit")
            .or_else(|| span.attribute("dnet.queue"))
            .map_or(String::new(), |u| format!(" {u}"));
        let exit = span
            .attribute("dnet.exit_layer")
            .map_or(String::new(), |e| format!(" exit {e}"));
        let status = span.attribute("dnet.status").map_or(String::new(), |s| format!(" {s}"));
        text += &format!(
            "{}{} ({}){unit}{exit}{status} {:.2} ms\n",
            "  ".repeat(depth),
            span.name,
            span.service,
            span.duration().as_secs_f64() * 1e3
        );
        text += &tree(spans, &span.span_id, depth + 1);
    }
    text
}

fn near(span: Duration, hop: Duration, what: &str, record: &HopRecord) {
    let apart = span.abs_diff(hop);
    assert!(
        apart <= WITHIN,
        "{what}: the spans say {span:?}, the hop record {hop:?}: {record:?}"
    );
}
