//! Closed-loop callers and how each call ended.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dnet_proto::{ComputationRequest, DNetClient, Data, StatusCode};
use safetensors::tensor::{Dtype, TensorView};

/// Past its deadline plus this, a call that has not ended counts as lost (a hang).
pub const GRACE: Duration = Duration::from_secs(2);

/// What the callers saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub answered: u64,
    /// Clean errors: a gRPC status with a message, by code.
    pub errors: BTreeMap<String, u64>,
    /// Hangs, empty successes, errors without a message.
    pub lost: u64,
    /// How far past its deadline the slowest call ended, ms.
    pub max_over_deadline_ms: f64,
    /// End times of the answered calls.
    pub answered_at: Vec<Instant>,
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

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.lost += other.lost;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.max_over_deadline_ms = self.max_over_deadline_ms.max(other.max_over_deadline_ms);
        self.answered_at.extend(other.answered_at);
    }
}

/// A normalised-image-sized `x` (zeros), safetensors-encoded.
pub fn image() -> Vec<u8> {
    let data = vec![0_u8; 3 * 32 * 32 * 4];
    let view = TensorView::new(Dtype::F32, vec![1, 3, 32, 32], &data).expect("a valid view");
    safetensors::serialize([("x", view)], None).expect("serialize")
}

/// `callers` closed-loop callers against `address` for `duration`, each call with `deadline`.
pub async fn run(address: &str, callers: usize, duration: Duration, deadline: Duration) -> Tally {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("address")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    let client = DNetClient::new(channel);
    let x = image();
    let end = Instant::now() + duration;
    let tasks = (0..callers).map(|_| {
        let (mut client, x) = (client.clone(), x.clone());
        tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < end {
                let mut request = tonic::Request::new(ComputationRequest {
                    start_layer: 0,
                    x: x.clone(),
                });
                request.set_timeout(deadline);
                let sent = Instant::now();
                tally.sent += 1;
                let outcome = tokio::time::timeout(deadline + GRACE, client.compute(request)).await;
                let over = sent.elapsed().as_secs_f64() * 1e3 - deadline.as_secs_f64() * 1e3;
                tally.max_over_deadline_ms = tally.max_over_deadline_ms.max(over);
                match outcome {
                    Err(_) => tally.lost += 1,
                    Ok(Ok(answer)) => {
                        let answer = answer.into_inner();
                        let has_result = matches!(&answer.data, Some(Data::Result(r)) if !r.is_empty());
                        if answer.status == StatusCode::Success as i32 && has_result {
                            tally.answered += 1;
                            tally.answered_at.push(Instant::now());
                        } else if answer.status == StatusCode::Error as i32 {
                            *tally.errors.entry("ERROR reply".into()).or_default() += 1;
                        } else {
                            tally.lost += 1;
                        }
                    }
                    Ok(Err(status)) if !status.message().is_empty() => {
                        *tally.errors.entry(format!("{:?}", status.code())).or_default() += 1;
                        // Do not spin on an unreachable unit.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(Err(_)) => tally.lost += 1,
                }
            }
            tally
        })
    });
    let mut total = Tally::default();
    for tally in futures::future::join_all(tasks).await.into_iter().flatten() {
        total.merge(tally);
    }
    total
}
