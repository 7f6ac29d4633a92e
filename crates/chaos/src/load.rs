//! Callers in closed and open loop, each request with an input of its own,
//! and how each call ended.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dnet_proto::{ComputationRequest, DNetClient, Data, StatusCode};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// Past its deadline plus this, a call that has not ended counts as lost (a hang).
pub const GRACE: Duration = Duration::from_secs(2);

/// What the callers saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Requests were numbered from here, `sent` of them in a row.
    pub first_id: u64,
    pub sent: u64,
    /// SUCCESS answers with a result.
    pub answered: u64,
    /// Clean errors: a gRPC status with a message, or an ERROR reply, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Hangs, empty successes, errors without a message.
    pub lost: u64,
    /// How far past its deadline the slowest call ended, ms.
    pub max_over_deadline_ms: f64,
    /// End times of the answered calls.
    pub answered_at: Vec<Instant>,
    /// End times of the calls that ended in a clean error.
    pub failed_at: Vec<Instant>,
    /// Latency of each answered call, ms.
    pub latencies_ms: Vec<f64>,
    /// Every answer: the id of the request it answered and its probabilities,
    /// to check later that it is that request's answer.
    pub answers: Vec<(u64, Vec<f32>)>,
}

impl Tally {
    /// Seconds from `since` to the first answer after it.
    pub fn recovery_after(&self, since: Instant) -> Option<f64> {
        self.answered_at
            .iter()
            .filter(|t| **t >= since)
            .min()
            .map(|t| t.duration_since(since).as_secs_f64())
    }

    /// "first answer N s after `event`", or "no answer after `event`".
    pub fn recovery_note(&self, since: Instant, event: &str) -> String {
        match self.recovery_after(since) {
            Some(s) => format!("first answer {s:.2} s after {event}"),
            None => format!("no answer after {event}"),
        }
    }

    /// Answers per second inside the window of `length` from `start`: calls
    /// answered within `deadline` whose answer came before the window closed.
    /// A load's last calls end after its window; counting them would credit
    /// the window with work done after it (a closed loop of 8 callers adds
    /// 8 answers, 10% of a 4 s window at 20 answers/s).
    pub fn rate_within(&self, start: Instant, length: Duration, deadline: Duration) -> f64 {
        let end = start + length;
        let counted = self
            .answered_at
            .iter()
            .zip(&self.latencies_ms)
            .filter(|(at, ms)| **at <= end && **ms <= deadline.as_secs_f64() * 1e3)
            .count();
        counted as f64 / length.as_secs_f64()
    }

    /// Errors that ended outside `from..=to`.
    pub fn errors_outside(&self, from: Instant, to: Instant) -> usize {
        self.failed_at.iter().filter(|t| **t < from || **t > to).count()
    }

    /// Errors of every kind together.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.lost += other.lost;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.max_over_deadline_ms = self.max_over_deadline_ms.max(other.max_over_deadline_ms);
        self.answered_at.extend(other.answered_at);
        self.failed_at.extend(other.failed_at);
        self.latencies_ms.extend(other.latencies_ms);
        self.answers.extend(other.answers);
    }
}

/// The input of request `id`: a normalised-image-shaped `x` with values
/// drawn from `id` (splitmix64), safetensors-encoded. Every request differs,
/// so every answer can be told apart.
#[must_use]
pub fn image(id: u64) -> Vec<u8> {
    let mut state = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut data = Vec::with_capacity(3 * 32 * 32 * 4);
    for _ in 0..3 * 32 * 32 {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Uniform in [-2, 2): the range of normalised CIFAR-10 pixels.
        let value = (z >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0;
        data.extend_from_slice(&value.to_le_bytes());
    }
    let view = TensorView::new(Dtype::F32, vec![1, 3, 32, 32], &data).expect("a valid view");
    safetensors::serialize([("x", view)], None).expect("serialize")
}

/// The `probs` of a `result` buffer.
fn probabilities(result: &[u8]) -> Option<Vec<f32>> {
    let tensors = SafeTensors::deserialize(result).ok()?;
    let probs = tensors.tensor("probs").ok()?;
    Some(
        probs
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

fn client(address: &str) -> anyhow::Result<DNetClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    Ok(DNetClient::new(channel))
}

/// Sends request `id` with `deadline` and adds how it ended to `tally`.
async fn call(client: &mut DNetClient<tonic::transport::Channel>, id: u64, deadline: Duration, tally: &mut Tally) {
    let mut request = tonic::Request::new(ComputationRequest {
        start_layer: 0,
        x: image(id).into(),
        ..ComputationRequest::default()
    });
    request.set_timeout(deadline);
    let sent = Instant::now();
    tally.sent += 1;
    let outcome = tokio::time::timeout(deadline + GRACE, client.compute(request)).await;
    let took = sent.elapsed();
    tally.max_over_deadline_ms = tally
        .max_over_deadline_ms
        .max((took.as_secs_f64() - deadline.as_secs_f64()) * 1e3);
    match outcome {
        Err(_) => tally.lost += 1,
        Ok(Ok(answer)) => {
            let answer = answer.into_inner();
            let probs = match &answer.data {
                Some(Data::Result(result)) => probabilities(result),
                _ => None,
            };
            match (StatusCode::try_from(answer.status), probs) {
                (Ok(StatusCode::Success), Some(probs)) => {
                    tally.answered += 1;
                    tally.answered_at.push(Instant::now());
                    tally.latencies_ms.push(took.as_secs_f64() * 1e3);
                    tally.answers.push((id, probs));
                }
                (Ok(StatusCode::Error), _) => {
                    *tally.errors.entry("ERROR reply".into()).or_default() += 1;
                    tally.failed_at.push(Instant::now());
                }
                _ => tally.lost += 1,
            }
        }
        Ok(Err(status)) if !status.message().is_empty() => {
            // The caller's own timer firing first (tonic says CANCELLED
            // "Timeout expired") is the same deadline as the unit's answer:
            // which comes first is a race on a busy machine.
            let kind = if status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired" {
                "DeadlineExceeded".to_owned()
            } else {
                format!("{:?}", status.code())
            };
            *tally.errors.entry(kind).or_default() += 1;
            tally.failed_at.push(Instant::now());
        }
        Ok(Err(_)) => tally.lost += 1,
    }
}

/// One tally of all the callers' tallies.
async fn gather(first_id: u64, tasks: Vec<tokio::task::JoinHandle<Tally>>) -> anyhow::Result<Tally> {
    let mut total = Tally {
        first_id,
        ..Tally::default()
    };
    for tally in futures::future::join_all(tasks).await {
        total.merge(tally?);
    }
    Ok(total)
}

/// `callers` closed-loop callers against `address` for `duration`, each call
/// with `deadline`; request ids count up from `first_id`.
pub async fn closed_loop(
    address: &str,
    callers: usize,
    duration: Duration,
    deadline: Duration,
    first_id: u64,
) -> anyhow::Result<Tally> {
    // Unpaced: each caller sends its next call as soon as the last one ends.
    paced_loop(
        address,
        callers,
        f64::INFINITY,
        tokio::time::sleep(duration),
        deadline,
        first_id,
    )
    .await
}

/// A paced closed loop: `callers` callers, each waiting for its answer
/// before the next call and sending at most `rate` / `callers` calls a
/// second (`f64::INFINITY`: unpaced), until `until` completes; each call with
/// `deadline`, ids from `first_id`. At a rate below capacity it loads the
/// units to that share, and when they stall, the callers wait with them
/// rather than pile up.
pub async fn paced_loop(
    address: &str,
    callers: usize,
    rate: f64,
    until: impl std::future::Future<Output = ()>,
    deadline: Duration,
    first_id: u64,
) -> anyhow::Result<Tally> {
    let client = client(address)?;
    let next_id = Arc::new(AtomicU64::new(first_id));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let interval = Duration::from_secs_f64(callers as f64 / rate);
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (mut client, next_id, stop) = (client.clone(), Arc::clone(&next_id), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let started = tokio::time::Instant::now();
                    let errors = tally.error_count();
                    call(
                        &mut client,
                        next_id.fetch_add(1, Ordering::SeqCst),
                        deadline,
                        &mut tally,
                    )
                    .await;
                    if tally.error_count() > errors {
                        // Do not spin on an unreachable unit.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    tokio::time::sleep_until(started + interval).await;
                }
                tally
            })
        })
        .collect();
    until.await;
    stop.store(true, Ordering::Relaxed);
    gather(first_id, tasks).await
}

/// Open loop: one request every 1/`rate` s for `duration`, whatever the
/// answers, each with `deadline`; request ids count up from `first_id`.
pub async fn open_loop(
    address: &str,
    rate: f64,
    duration: Duration,
    deadline: Duration,
    first_id: u64,
) -> anyhow::Result<Tally> {
    let client = client(address)?;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    let mut id = first_id;
    while Instant::now() < end {
        ticks.tick().await;
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            call(&mut client, id, deadline, &mut tally).await;
            tally
        }));
        id += 1;
    }
    gather(first_id, tasks).await
}
