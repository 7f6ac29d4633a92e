//! One request end to end: the local layers (if any), then the first unit.

use std::time::{Duration, Instant};

use dnet_common::balance::Balanced;
use dnet_common::never_sent::never_sent;
use dnet_model::codec;
use dnet_proto::{ComputationRequest, ComputationResponse, DNetClient, Data, HopRecord, StatusCode};
use result::{answers_of, category_of};
use tonic::transport::Channel;

use crate::inputs::{Inputs, Sample};
use crate::local::LocalLayers;

/// One sample's answer: the exit layer that gave it and its category.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleAnswer {
    pub exit: u64,
    pub category: Option<i64>,
}

/// How one request ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Answered on the device at local exit `exit`; never sent (one sample).
    Local { exit: u64, category: Option<i64> },
    /// Answered by the units: each sample at its own exit, in input order;
    /// `degraded`: a unit answered early because the rest was late.
    Answered {
        samples: Vec<SampleAnswer>,
        hops: Vec<HopRecord>,
        degraded: bool,
    },
    /// Failed; the kind is a gRPC code name or a reply status.
    Failed { kind: String, sent: bool },
}

/// A finished request.
#[derive(Clone, Debug)]
pub struct Record {
    /// The request's number (its inputs: `Inputs::request(index, n)`).
    pub index: u64,
    pub outcome: Outcome,
    pub latency: Duration,
    /// The label of each sample of the request, when known.
    pub labels: Vec<Option<u8>>,
}

impl Record {
    /// One line: how the request ended, its exit layer and per-hop times.
    #[must_use]
    pub fn describe(&self) -> String {
        let ms = |us: u64| us as f64 / 1e3;
        let latency = self.latency.as_secs_f64() * 1e3;
        let shown = |category: &Option<i64>| category.map_or("?".to_owned(), |c| c.to_string());
        match &self.outcome {
            Outcome::Local { exit, category } => {
                format!(
                    "answered on the device at exit {exit} (category {}) in {latency:.1} ms",
                    shown(category)
                )
            }
            Outcome::Failed { kind, .. } => format!("failed: {kind} after {latency:.1} ms"),
            Outcome::Answered {
                samples,
                hops,
                degraded,
            } => {
                let hops: Vec<String> = hops
                    .iter()
                    .map(|h| {
                        format!(
                            "{} {}->{} wait {:.1} ms compute {:.1} ms total {:.1} ms",
                            h.unit,
                            h.start_layer,
                            h.exit_layer,
                            ms(h.queue_wait_us),
                            ms(h.compute_us),
                            ms(h.total_us)
                        )
                    })
                    .collect();
                let answers = match samples.as_slice() {
                    [one] => format!("exit {} (category {})", one.exit, shown(&one.category)),
                    many => format!(
                        "exits {:?} (categories {})",
                        many.iter().map(|a| a.exit).collect::<Vec<_>>(),
                        many.iter().map(|a| shown(&a.category)).collect::<Vec<_>>().join(", ")
                    ),
                };
                let late = if *degraded {
                    " (answered early: the rest was late)"
                } else {
                    ""
                };
                format!("{answers}{late} in {latency:.1} ms; hops: {}", hops.join(" | "))
            }
        }
    }

    /// One JSON line for `--answers`: the request's number, latency, each
    /// sample's exit and category (and whether answered late), or how it failed.
    #[must_use]
    pub fn answer_line(&self) -> serde_json::Value {
        let latency_ms = self.latency.as_secs_f64() * 1e3;
        match &self.outcome {
            Outcome::Local { exit, category } => serde_json::json!({
                "request": self.index, "latency_ms": latency_ms, "local": true,
                "exits": [exit], "categories": [category], "labels": self.labels,
            }),
            Outcome::Answered { samples, degraded, .. } => serde_json::json!({
                "request": self.index, "latency_ms": latency_ms, "degraded": degraded,
                "exits": samples.iter().map(|s| s.exit).collect::<Vec<_>>(),
                "categories": samples.iter().map(|s| s.category).collect::<Vec<_>>(),
                "labels": self.labels,
            }),
            Outcome::Failed { kind, .. } => serde_json::json!({
                "request": self.index, "latency_ms": latency_ms, "error": kind, "labels": self.labels,
            }),
        }
    }

    /// Whether the request was sent to the first unit.
    #[must_use]
    pub fn sent(&self) -> bool {
        match &self.outcome {
            Outcome::Local { .. } => false,
            Outcome::Answered { .. } => true,
            Outcome::Failed { sent, .. } => *sent,
        }
    }
}

/// Everything a request needs; shared by the callers.
pub struct Context {
    pub inputs: Inputs,
    pub local: Option<LocalLayers>,
    pub first: FirstUnit,
    pub timeout: Duration,
    /// Send images as the original DNet's client does (`pickle.dumps`).
    pub legacy_pickle: bool,
    /// Thresholds every request carries (empty: the units' own).
    pub request_thresholds: Vec<f64>,
    /// Samples each request carries (1 with local layers or pickles).
    pub samples_per_request: u64,
}

/// The first unit: a client whose calls spread over its live addresses.
#[derive(Clone, Debug)]
pub struct FirstUnit {
    pub client: DNetClient<Channel>,
    pub balanced: Balanced,
}

/// Sends `sample` (after the local layers, when there are any) and waits for its answer.
pub async fn run(index: u64, sample: Sample, context: &Context) -> Record {
    let started = Instant::now();
    let labels = sample.labels;
    let image = |x: Result<Vec<u8>, _>| {
        x.map(|x| ComputationRequest {
            start_layer: 0,
            x: x.into(),
            ..ComputationRequest::default()
        })
        .map_err(|_| failed("ENCODE", false))
    };
    let request = match &context.local {
        Some(local) => through_local_layers(sample.image, local).await,
        None if context.legacy_pickle => image(codec::encode_pickle(&sample.image)),
        None => image(codec::encode_x(&sample.image)),
    };
    let outcome = match request {
        Ok(mut request) => {
            request.thresholds.clone_from(&context.request_thresholds);
            send(request, context.first.clone(), context.timeout).await
        }
        Err(outcome) => outcome,
    };
    Record {
        index,
        outcome,
        latency: started.elapsed(),
        labels,
    }
}

fn failed(kind: &str, sent: bool) -> Outcome {
    Outcome::Failed {
        kind: kind.to_owned(),
        sent,
    }
}

/// The local layers: the request for the first unit, or how it ended here.
async fn through_local_layers(image: tch::Tensor, local: &LocalLayers) -> Result<ComputationRequest, Outcome> {
    let answer = local.compute(image).await.map_err(|_| failed("LOCAL_ERROR", false))?;
    match (StatusCode::try_from(answer.status), answer.data) {
        (Ok(StatusCode::Success), Some(Data::Result(result))) => Err(Outcome::Local {
            exit: answer.hops.first().map_or(0, |h| h.exit_layer),
            category: category_of(&result),
        }),
        (Ok(StatusCode::NotSuccess), Some(Data::NextRequest(next))) => Ok(next),
        _ => Err(failed("LOCAL_ERROR", false)),
    }
}

/// How many times a call that never reached the unit is sent again (gRPC's
/// transparent retry, gRFC A6): a connection that ends after the unit's
/// GOAWAY (`--max-connection-age`) cancels the calls still queued for it.
const TRANSPARENT_RETRIES: u32 = 3;

/// Calls the first unit with `request`, within `timeout` in all.
async fn send(request: ComputationRequest, mut first: FirstUnit, timeout: Duration) -> Outcome {
    if first.balanced.live() == 0 {
        // With no address to call, the balancer would hold the call until its
        // timeout; counted as sent, as a call refused by the unit would be.
        return failed("Unavailable", true);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let client = &mut first.client;
    let mut retries = 0;
    loop {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout_at(deadline, client.compute(call)).await {
            Err(_) => return failed("DeadlineExceeded", true),
            Ok(Err(status)) if retries < TRANSPARENT_RETRIES && never_sent(&status) => retries += 1,
            Ok(Err(status)) => return failed(&format!("{:?}", status.code()), true),
            Ok(Ok(answer)) => return answered(answer.into_inner()),
        }
    }
}

fn answered(answer: ComputationResponse) -> Outcome {
    match (StatusCode::try_from(answer.status), answer.data) {
        (Ok(StatusCode::Success), Some(Data::Result(result))) => Outcome::Answered {
            samples: answers_of(&result, answer.exit_layer),
            hops: answer.hops,
            degraded: answer.degraded,
        },
        (Ok(StatusCode::NotSuccess), _) => Outcome::Failed {
            kind: "NOT_SUCCESS".into(),
            sent: true,
        },
        _ => Outcome::Failed {
            kind: "ERROR".into(),
            sent: true,
        },
    }
}

mod result {
    use safetensors::SafeTensors;

    use dnet_codec::answers::Answers;
    use dnet_codec::pickle::{self, PickleDtype};

    use super::SampleAnswer;

    /// Every sample's exit and category from a `result`: its `exit_layer`
    /// rows, or `exit` for all (a pickled result, or one from units before
    /// per-sample exits). An unreadable result: one sample, category unknown.
    pub fn answers_of(result: &[u8], exit: u64) -> Vec<SampleAnswer> {
        if let Ok(answers) = Answers::parse(result, exit) {
            return answers
                .category
                .iter()
                .zip(&answers.exit_layer)
                .map(|(&category, &exit)| SampleAnswer {
                    exit: u64::try_from(exit).unwrap_or_default(),
                    category: Some(category),
                })
                .collect();
        }
        vec![SampleAnswer {
            exit,
            category: category_of(result),
        }]
    }

    /// The most categories a pickled `result` may hold: each request carries
    /// one image, so its result holds one category; 64 (a unit's default
    /// `--max-request-samples`) leaves room, and bounds what a reply can make
    /// this client copy to 512 bytes.
    const MAX_RESULT_CATEGORIES: usize = 64;

    /// The first sample's category from a `result` buffer: safetensors, or
    /// the original DNet's pickled categories.
    pub fn category_of(result: &[u8]) -> Option<i64> {
        let first = |data: &[u8]| Some(i64::from_le_bytes(data.get(..8)?.try_into().ok()?));
        if pickle::looks_like_pickle(result) {
            let tensor = pickle::read(result, MAX_RESULT_CATEGORIES)
                .ok()
                .filter(|t| t.dtype == PickleDtype::I64)?;
            return first(&tensor.data);
        }
        let tensors = SafeTensors::deserialize(result).ok()?;
        first(tensors.tensor("category").ok()?.data())
    }
}
