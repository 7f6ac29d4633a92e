//! A flood of large calls against a unit whose worker is stalled
//! (docs/architecture.md, "Admission control"): 8 connections x 64 calls of
//! 30 MB each. The unit's peak memory must stay under its documented bound,
//! the surplus be refused while the worker is stalled (before its messages
//! are read), and a small call from a ninth connection be answered once the
//! worker resumes.

use std::time::{Duration, Instant};

use dnet_proto::ComputationRequest;
use dnet_testkit::flood::{flood, framed, peak_rss, Ended};
use dnet_testkit::{Broker, TestQueue};

use crate::bounds::Bounds;
use crate::faults::{unit, worker, ANSWER_EXIT};
use crate::load::Tally;
use crate::report::{Ran, Row};

const CONNECTIONS: usize = 8;
const CALLS: usize = 64;
const MESSAGE_BYTES: usize = 30_000_000;
/// The unit's limits for this scenario, stated on its command line.
const MAX_IN_FLIGHT: u64 = 16;
const MAX_CONNECTIONS: u64 = 32;
/// The documented bound of those limits: a request and a reply of
/// --max-message-bytes (48 MiB) per call, a 16 MiB HTTP/2 window per
/// connection, and 64 MiB for the process itself.
const BOUND_MIB: u64 = MAX_IN_FLIGHT * 2 * 48 + MAX_CONNECTIONS * 16 + 64;

/// The flood scenario.
///
/// # Errors
/// A unit that does not start, or metrics that cannot be read.
pub async fn flood_a_stalled_unit(broker: &Broker) -> anyhow::Result<Row> {
    eprintln!("[chaos] flood: {CONNECTIONS} connections x {CALLS} calls of 30 MB, worker stalled");
    let queue = TestQueue::new(broker);
    let limits = [
        "--max-in-flight".to_owned(),
        MAX_IN_FLIGHT.to_string(),
        "--max-connections".to_owned(),
        MAX_CONNECTIONS.to_string(),
    ];
    let unit = unit(broker, &queue, &limits.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let worker = worker(broker, &queue, ANSWER_EXIT, true).await?;
    worker.process.signal("STOP")?;
    let message = framed(&ComputationRequest {
        x: vec![1_u8; MESSAGE_BYTES].into(),
        ..ComputationRequest::default()
    });
    let started = Instant::now();
    let flooding = flood(unit.address, CONNECTIONS, CALLS, message, Duration::from_secs(120)).await?;
    let surplus = CONNECTIONS * CALLS - MAX_IN_FLIGHT as usize;
    let refused_while_stalled = dnet_testkit::wait_for("the surplus refused", Duration::from_secs(120), || async {
        let ended = flooding.ended();
        (ended.len() >= surplus).then(|| (ended, started.elapsed()))
    })
    .await;
    worker.process.signal("CONT")?;
    let ended = flooding.finish().await?;
    let ninth_started = Instant::now();
    let ninth = unit.client().await?.compute(ComputationRequest::default()).await;
    let ninth_ms = ninth_started.elapsed().as_secs_f64() * 1e3;
    // The high-water mark over the unit's whole life: the admitted calls read and published included.
    let peak = peak_rss(unit.process.id())?;

    let tally = tally(&ended);
    let failures = broken(peak, &refused_while_stalled, ninth.is_ok());
    let refused = match refused_while_stalled {
        Ok((early, after)) => format!(
            "{} refused while the worker was stalled ({} RESOURCE_EXHAUSTED by admission, {} REFUSED_STREAM by \
             HTTP/2: more streams on a connection than it takes), the last after {:.1} s",
            early.len(),
            early.iter().filter(|e| matches!(e, Ended::Status(8, _))).count(),
            early.iter().filter(|e| matches!(e, Ended::RefusedStream)).count(),
            after.as_secs_f64()
        ),
        Err(error) => format!("the surplus was not refused while the worker was stalled: {error}"),
    };
    let note = format!(
        "--max-in-flight {MAX_IN_FLIGHT}, --max-connections {MAX_CONNECTIONS}; peak RSS of the unit {} MiB, \
         bound {BOUND_MIB} MiB ({}); {refused}; the admitted calls answered once it resumed (an ERROR reply: \
         their x is not a tensor); a small call from a ninth connection then: {} in {ninth_ms:.0} ms",
        peak >> 20,
        if peak >> 20 <= BOUND_MIB { "under" } else { "OVER" },
        if ninth.is_ok() { "answered" } else { "failed" },
    );
    // Exactly the admitted calls are answered; the rest refused, and only so.
    let bounds = Bounds {
        min_answered: MAX_IN_FLIGHT as f64 / (CONNECTIONS * CALLS) as f64,
        errors_allowed: &["RefusedStream", "ResourceExhausted"],
        max_recovery: None,
    };
    let mut row = Row::of(
        "flood: 8 x 64 calls of 30 MB, worker stalled",
        tally,
        ANSWER_EXIT,
        Ran::one(&unit, &worker),
        note,
    )
    .await?
    .bounded(&bounds, None);
    row.failures.extend(failures);
    let answered = row.tally.answered;
    row.require(answered == MAX_IN_FLIGHT, || {
        format!("{answered} calls answered, not the {MAX_IN_FLIGHT} admitted")
    });
    Ok(row)
}

/// How the flooded calls ended, as the report counts calls.
fn tally(ended: &[Ended]) -> Tally {
    let mut tally = Tally {
        sent: ended.len() as u64,
        ..Tally::default()
    };
    for call in ended {
        let kind = match call {
            Ended::Status(0, _) => {
                tally.answered += 1;
                continue;
            }
            Ended::Status(code, _) => format!("{:?}", tonic::Code::from(*code)),
            Ended::RefusedStream => "RefusedStream".to_owned(),
            Ended::Broken(_) => {
                tally.lost += 1;
                continue;
            }
        };
        *tally.errors.entry(kind).or_default() += 1;
    }
    tally
}

/// The promises the flood found broken: the memory bound, the surplus
/// refused (and nothing else ended) while the worker was stalled, the ninth
/// connection answered.
fn broken(
    peak: u64,
    refused_while_stalled: &anyhow::Result<(Vec<Ended>, Duration)>,
    ninth_answered: bool,
) -> Vec<String> {
    let mut failures = Vec::new();
    if peak >> 20 > BOUND_MIB {
        failures.push(format!("peak RSS {} MiB over the bound {BOUND_MIB} MiB", peak >> 20));
    }
    match refused_while_stalled {
        Ok((early, _)) if early.iter().all(Ended::refused) => {}
        Ok(_) => failures.push("calls other than the surplus ended while the worker was stalled".to_owned()),
        Err(_) => failures.push("the surplus was not refused while the worker was stalled".to_owned()),
    }
    if !ninth_answered {
        failures.push("the ninth connection's call failed".to_owned());
    }
    failures
}
