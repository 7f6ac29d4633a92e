//! The report: counts, throughput, latency percentiles, exits, accuracy and
//! the mean per-hop time split, as text and JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::call::{Outcome, Record};

#[derive(Debug, Serialize, PartialEq)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Mean times of the hop at one position of the cascade (0 = first unit).
#[derive(Debug, Serialize, PartialEq)]
pub struct HopSplit {
    pub hop: usize,
    /// Unit name seen most recently at this position.
    pub unit: String,
    pub count: u64,
    pub queue_wait_ms: f64,
    pub compute_ms: f64,
    /// Time on the link into this unit and back, gRPC included: the caller's
    /// time for the call minus this unit's total.
    pub network_ms: f64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct QueueStatus {
    pub qlength: u64,
    pub consumer: u64,
}

/// The whole report, as written with `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Calls made to the first unit.
    pub sent: u64,
    /// Requests the units answered (SUCCESS).
    pub answered: u64,
    /// Failed requests by kind (gRPC code name, ERROR, NOT_SUCCESS, LOCAL_ERROR).
    pub errors: BTreeMap<String, u64>,
    /// Requests answered on the device, never sent.
    pub local: u64,
    /// Answered (by the units or locally) per second of wall time.
    pub throughput_rps: f64,
    /// Latency of the answered requests (local ones included), ms.
    pub latency_ms: Option<Latency>,
    /// Samples the units answered (requests times samples per request).
    pub answered_samples: u64,
    /// Requests a unit answered early because the units after it were late
    /// (`degraded`: --answer-when-late).
    pub degraded: u64,
    /// Model time per answered request: over its hops, each forward's
    /// compute time divided by the samples in that forward (its share of a
    /// batch), summed; exact for requests of one sample. Null without hops.
    pub compute_ms_per_answer: Option<f64>,
    /// Exit layer -> count, over the samples the units answered, each at its
    /// own exit (JSON keys are strings).
    pub exits: BTreeMap<u64, u64>,
    /// Exit layer -> count, over the requests answered locally.
    pub local_exits: BTreeMap<u64, u64>,
    /// Share of the answered samples (units and local) whose category is the label; null without labels.
    pub accuracy: Option<f64>,
    /// Mean per-hop split of the requests the units answered.
    pub hops: Vec<HopSplit>,
    pub wall_s: f64,
    pub qstatus_before: Option<QueueStatus>,
    pub qstatus_after: Option<QueueStatus>,
}

impl Report {
    #[must_use]
    pub fn new(records: &[Record], wall: Duration, labelled: bool) -> Report {
        let mut report = Report {
            sent: records.iter().filter(|r| r.sent()).count() as u64,
            answered: 0,
            answered_samples: 0,
            degraded: 0,
            compute_ms_per_answer: None,
            errors: BTreeMap::new(),
            local: 0,
            throughput_rps: 0.0,
            latency_ms: None,
            exits: BTreeMap::new(),
            local_exits: BTreeMap::new(),
            accuracy: None,
            hops: Vec::new(),
            wall_s: wall.as_secs_f64(),
            qstatus_before: None,
            qstatus_after: None,
        };
        let mut latencies = Vec::new();
        let (mut correct, mut judged) = (0_u64, 0_u64);
        for record in records {
            let categories: Vec<Option<i64>> = match &record.outcome {
                Outcome::Local { exit, category } => {
                    report.local += 1;
                    *report.local_exits.entry(*exit).or_default() += 1;
                    vec![*category]
                }
                Outcome::Answered { samples, degraded, .. } => {
                    report.answered += 1;
                    report.degraded += u64::from(*degraded);
                    report.answered_samples += samples.len() as u64;
                    for sample in samples {
                        *report.exits.entry(sample.exit).or_default() += 1;
                    }
                    samples.iter().map(|s| s.category).collect()
                }
                Outcome::Failed { kind, .. } => {
                    *report.errors.entry(kind.clone()).or_default() += 1;
                    continue;
                }
            };
            latencies.push(record.latency.as_secs_f64() * 1e3);
            // A sample the answer has no row for counts as wrong.
            for (i, label) in record.labels.iter().enumerate() {
                judged += 1;
                let category = categories.get(i).copied().flatten();
                if category.is_some() && category.map(|c| c as u8) == *label {
                    correct += 1;
                }
            }
        }
        let done = report.answered + report.local;
        report.throughput_rps = if report.wall_s > 0.0 {
            done as f64 / report.wall_s
        } else {
            0.0
        };
        report.latency_ms = percentiles(latencies);
        report.accuracy = (labelled && judged > 0).then(|| correct as f64 / judged as f64);
        report.hops = hop_splits(records);
        report.compute_ms_per_answer = compute_per_answer(records);
        report
    }

    /// Whether every request was answered.
    #[must_use]
    pub fn all_answered(&self) -> bool {
        self.errors.is_empty()
    }

    /// A one-line summary of what failed.
    #[must_use]
    pub fn failure_line(&self) -> String {
        let failed: u64 = self.errors.values().sum();
        let kinds: Vec<String> = self.errors.iter().map(|(k, n)| format!("{k}={n}")).collect();
        format!(
            "{failed} of {} requests failed: {}",
            failed + self.answered + self.local,
            kinds.join(", ")
        )
    }

    /// The report for people.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "sent {} | answered {} | local {} | errors {} | {:.1} answers/s over {:.1} s",
            self.sent,
            self.answered,
            self.local,
            self.errors.values().sum::<u64>(),
            self.throughput_rps,
            self.wall_s
        ));
        if let Some(l) = &self.latency_ms {
            line(format!(
                "latency ms: mean {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
                l.mean, l.p50, l.p90, l.p99, l.max
            ));
        }
        if self.answered_samples != self.answered {
            line(format!(
                "answered samples: {} (exits and accuracy below are per sample)",
                self.answered_samples
            ));
        }
        line(format!(
            "exits (units): {:?}  local exits: {:?}",
            self.exits, self.local_exits
        ));
        if self.degraded > 0 {
            line(format!(
                "answered early because the rest was late (degraded): {}",
                self.degraded
            ));
        }
        line(format!(
            "accuracy: {}",
            self.accuracy
                .map_or("n/a (no labels)".into(), |a| format!("{:.2}%", a * 100.0))
        ));
        for h in &self.hops {
            line(format!(
                "hop {} ({}, {} answers): queue wait {:.2} ms, compute {:.2} ms, network {:.2} ms",
                h.hop, h.unit, h.count, h.queue_wait_ms, h.compute_ms, h.network_ms
            ));
        }
        for (name, status) in [("before", &self.qstatus_before), ("after", &self.qstatus_after)] {
            if let Some(q) = status {
                line(format!("queue {name}: {} waiting, {} consumers", q.qlength, q.consumer));
            }
        }
        if !self.errors.is_empty() {
            line(format!("errors: {:?}", self.errors));
        }
        out
    }
}

fn percentiles(mut values: Vec<f64>) -> Option<Latency> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
    Some(Latency {
        mean: values.iter().sum::<f64>() / values.len() as f64,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: values[values.len() - 1],
    })
}

/// Mean model time per answered request (see `Report::compute_ms_per_answer`).
fn compute_per_answer(records: &[Record]) -> Option<f64> {
    let shares: Vec<f64> = records
        .iter()
        .filter_map(|record| match &record.outcome {
            Outcome::Answered { hops, .. } if !hops.is_empty() => Some(
                hops.iter()
                    .map(|h| h.compute_us as f64 / f64::from(h.batch_size.max(1)) / 1e3)
                    .sum(),
            ),
            _ => None,
        })
        .collect();
    (!shares.is_empty()).then(|| shares.iter().sum::<f64>() / shares.len() as f64)
}

/// Mean queue wait, compute and network time per hop position.
fn hop_splits(records: &[Record]) -> Vec<HopSplit> {
    let mut splits: Vec<HopSplit> = Vec::new();
    for record in records {
        let Outcome::Answered { hops, .. } = &record.outcome else {
            continue;
        };
        for (i, hop) in hops.iter().enumerate() {
            // The caller of hop 0 is this client; the caller of hop i is unit i-1,
            // whose own share is its queue wait and compute.
            let caller_ms = match i {
                0 => record.latency.as_secs_f64() * 1e3,
                _ => {
                    let previous = &hops[i - 1];
                    (previous
                        .total_us
                        .saturating_sub(previous.queue_wait_us + previous.compute_us)) as f64
                        / 1e3
                }
            };
            if splits.len() <= i {
                splits.push(HopSplit {
                    hop: i,
                    unit: String::new(),
                    count: 0,
                    queue_wait_ms: 0.0,
                    compute_ms: 0.0,
                    network_ms: 0.0,
                });
            }
            let split = &mut splits[i];
            split.unit.clone_from(&hop.unit);
            split.count += 1;
            split.queue_wait_ms += hop.queue_wait_us as f64 / 1e3;
            split.compute_ms += hop.compute_us as f64 / 1e3;
            split.network_ms += (caller_ms - hop.total_us as f64 / 1e3).max(0.0);
        }
    }
    for split in &mut splits {
        let n = split.count as f64;
        split.queue_wait_ms /= n;
        split.compute_ms /= n;
        split.network_ms /= n;
    }
    splits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::SampleAnswer;
    use dnet_proto::HopRecord;

    fn answered(latency_ms: u64, exit: u64, category: i64, label: u8) -> Record {
        let hop = |total_us, queue_wait_us, compute_us| HopRecord {
            total_us,
            queue_wait_us,
            compute_us,
            ..HopRecord::default()
        };
        Record {
            index: 0,
            outcome: Outcome::Answered {
                samples: vec![SampleAnswer {
                    exit,
                    category: Some(category),
                }],
                hops: vec![hop(8_000, 1_000, 2_000), hop(4_000, 1_000, 3_000)],
                degraded: false,
            },
            latency: Duration::from_millis(latency_ms),
            labels: vec![Some(label)],
        }
    }

    #[test]
    fn counts_exits_accuracy_errors_and_splits_hops() {
        let records = vec![
            answered(10, 16, 3, 3),
            answered(20, 12, 1, 2),
            Record {
                index: 2,
                outcome: Outcome::Local {
                    exit: 4,
                    category: Some(5),
                },
                latency: Duration::from_millis(5),
                labels: vec![Some(5)],
            },
            Record {
                index: 3,
                outcome: Outcome::Failed {
                    kind: "Unavailable".into(),
                    sent: true,
                },
                latency: Duration::ZERO,
                labels: vec![None],
            },
        ];
        let report = Report::new(&records, Duration::from_secs(2), true);
        assert_eq!((report.sent, report.answered, report.local), (3, 2, 1));
        assert_eq!(report.errors.get("Unavailable"), Some(&1));
        assert_eq!(report.exits, BTreeMap::from([(12, 1), (16, 1)]));
        assert_eq!(report.accuracy, Some(2.0 / 3.0));
        assert_eq!(report.throughput_rps, 1.5);
        assert_eq!(
            report.latency_ms,
            Some(Latency {
                mean: 35.0 / 3.0,
                p50: 10.0,
                p90: 20.0,
                p99: 20.0,
                max: 20.0
            })
        );
        // hop 0: caller sees 10 and 20 ms, unit total 8 ms -> network 2 and 12, mean 7.
        assert_eq!((report.hops[0].network_ms, report.hops[0].compute_ms), (7.0, 2.0));
        // hop 1: unit 0 spent 8 - 1 - 2 = 5 ms on the call, unit 1's total is 4 -> 1 ms.
        assert_eq!((report.hops[1].network_ms, report.hops[1].queue_wait_ms), (1.0, 1.0));
        assert!(!report.all_answered());
        assert_eq!(report.failure_line(), "1 of 4 requests failed: Unavailable=1");
    }

    #[test]
    fn counts_exits_and_accuracy_per_sample() {
        let answer = |exit, category| SampleAnswer {
            exit,
            category: Some(category),
        };
        let records = vec![Record {
            index: 0,
            outcome: Outcome::Answered {
                samples: vec![answer(8, 1), answer(16, 2), answer(8, 3)],
                hops: Vec::new(),
                degraded: false,
            },
            latency: Duration::from_millis(10),
            // The third sample is wrong; a fourth has no row in the answer.
            labels: vec![Some(1), Some(2), Some(4), Some(5)],
        }];
        let report = Report::new(&records, Duration::from_secs(1), true);
        assert_eq!((report.answered, report.answered_samples), (1, 3));
        assert_eq!(report.exits, BTreeMap::from([(8, 2), (16, 1)]));
        assert_eq!(report.accuracy, Some(0.5));
    }
}
