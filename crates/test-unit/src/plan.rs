//! Where to split the network (`test-unit plan`; the model is stated in
//! docs/calibrate-and-plan.md).
//!
//! A layout is the exit layers of the units in order, the last 16. An input
//! is answered by the first unit whose exit it is confident at (its
//! confidences in `calibrate`'s report, under the layout's thresholds).
//! Its latency is the client's link (if any), then for each unit it reaches:
//! that unit's compute from its start layer to its exit, and, to reach the
//! next unit, the link's round trip, the handed-on tensor's bytes over the
//! link's rate, and a fixed cost per hop. The mean, p50 and p90 are over the
//! inputs; bytes per link are what the inputs that cross it send, per answer.

use std::time::Duration;

use dnet_model::model::{BOUNDARY_SHAPES, TRUNK_LAYERS};

use crate::calibrate::{matches, Cascade, Reference};
use crate::exit_table::ExitTable;
use crate::profile::LayerTimes;

/// A network link between two sites.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Link {
    pub bits_per_second: f64,
    pub rtt: Duration,
}

impl Link {
    /// Sending `bytes` and getting the (small) answer back, in ms.
    #[must_use]
    pub fn ms(&self, bytes: f64) -> f64 {
        self.rtt.as_secs_f64() * 1e3 + bytes * 8.0 / self.bits_per_second * 1e3
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} Mbit/s {} ms RTT",
            self.bits_per_second / 1e6,
            self.rtt.as_secs_f64() * 1e3
        )
    }
}

/// Parses `RATE/RTT`: a rate in kbit, mbit or gbit (per second) and a
/// duration, e.g. `100mbit/2ms`.
///
/// # Errors
/// Another form.
pub fn parse_link(text: &str) -> Result<Link, String> {
    let form = || format!("'{text}' is not a link: give RATE/RTT, e.g. 100mbit/2ms or 20mbit/20ms");
    let (rate, rtt) = text.split_once('/').ok_or_else(form)?;
    let rate = rate.trim().to_ascii_lowercase();
    let (number, scale) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(unit, scale)| rate.strip_suffix(unit).map(|n| (n.to_owned(), *scale)))
        .ok_or_else(form)?;
    let bits_per_second = number.trim().parse::<f64>().map_err(|_| form())? * scale;
    if !(bits_per_second.is_finite() && bits_per_second > 0.0) {
        return Err(form());
    }
    let rtt = dnet_common::duration::parse_duration(rtt.trim())?;
    Ok(Link { bits_per_second, rtt })
}

/// What a plan is computed from.
#[derive(Clone, Debug)]
pub struct Setting {
    /// One per unit (the same times may repeat).
    pub times: Vec<LayerTimes>,
    /// Links between consecutive units: one fewer than units.
    pub links: Vec<Link>,
    /// From the client to the first unit; `None`: the client is on its machine.
    pub client: Option<Link>,
    /// Bytes per value of a handed-on tensor (4: f32, 2: f16 or bf16).
    pub wire_bytes: usize,
    /// Fixed cost of each call between sites, besides its link.
    pub hop_overhead: Duration,
}

/// Bytes of a request around a tensor's values: safetensors header, protobuf.
const ENVELOPE_BYTES: usize = 200;

/// Bytes of a request starting at `start`: the image (F32) at 0, the
/// handed-on tensor in `wire_bytes` per value after.
#[must_use]
pub fn request_bytes(start: usize, wire_bytes: usize) -> usize {
    let values: usize = BOUNDARY_SHAPES[start].iter().product();
    values * if start == 0 { 4 } else { wire_bytes } + ENVELOPE_BYTES
}

/// The expected cost of one layout.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// Exit layer of each unit, 16 last.
    pub exits: Vec<usize>,
    /// The thresholds of exits 1..15 the prediction assumes.
    pub thresholds: Vec<f64>,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    /// Share of inputs each unit answers.
    pub answered: Vec<f64>,
    /// Bytes per answer on the client's link (0 without one).
    pub client_bytes: f64,
    /// Bytes per answer on each link between units.
    pub link_bytes: Vec<f64>,
    /// Share of inputs answered as exit 16 answers them.
    pub agreement: f64,
    /// Share answered with their label (labelled calibration data only).
    pub accuracy: Option<f64>,
}

/// Every layout of `units` units: rising exit layers ending in 16 (one
/// unit: the whole network).
#[must_use]
pub fn layouts(units: usize) -> Vec<Vec<usize>> {
    fn extend(prefix: &mut Vec<usize>, units: usize, out: &mut Vec<Vec<usize>>) {
        if prefix.len() + 1 == units {
            let mut layout = prefix.clone();
            layout.push(TRUNK_LAYERS);
            out.push(layout);
            return;
        }
        let after = prefix.last().copied().unwrap_or(0);
        for e in after + 1..TRUNK_LAYERS {
            prefix.push(e);
            extend(prefix, units, out);
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    extend(&mut Vec::new(), units, &mut out);
    out
}

/// Predicts the layout of `cascade`'s exits and 16 (one unit each, as many
/// as `setting` has), each input of `table` exiting where `cascade` says.
#[must_use]
pub fn predict(setting: &Setting, table: &ExitTable, cascade: &Cascade) -> Prediction {
    let exits: Vec<usize> = cascade.exits.iter().copied().chain([TRUNK_LAYERS]).collect();
    let inputs = table.len();
    let overhead_ms = setting.hop_overhead.as_secs_f64() * 1e3;
    let client_ms = setting
        .client
        .map_or(0.0, |link| link.ms(request_bytes(0, 4) as f64) + overhead_ms);
    // Cost of reaching unit k and computing there, and of each link.
    let starts: Vec<usize> = std::iter::once(0).chain(exits.iter().copied()).collect();
    let compute: Vec<f64> = (0..exits.len())
        .map(|k| setting.times[k].unit_ms(starts[k], exits[k]))
        .collect();
    let bytes: Vec<f64> = exits[..exits.len() - 1]
        .iter()
        .map(|&e| request_bytes(e, setting.wire_bytes) as f64)
        .collect();
    let hop: Vec<f64> = (0..bytes.len())
        .map(|k| setting.links[k].ms(bytes[k]) + overhead_ms)
        .collect();
    let mut latencies = Vec::with_capacity(inputs);
    let mut answered = vec![0usize; exits.len()];
    let mut agreeing = 0;
    let mut correct = 0;
    for i in 0..inputs {
        let exit = cascade.exit_of(table, i);
        let unit = exits.iter().position(|&e| e == exit).unwrap_or(exits.len() - 1);
        answered[unit] += 1;
        latencies.push(client_ms + compute[..=unit].iter().sum::<f64>() + hop[..unit].iter().sum::<f64>());
        agreeing += usize::from(matches(table, Reference::FinalExit, i, exit));
        correct += usize::from(matches(table, Reference::Labels, i, exit));
    }
    let share = |count: usize| count as f64 / inputs.max(1) as f64;
    // Inputs that cross link k: those answered after unit k.
    let link_bytes = (0..bytes.len())
        .map(|k| share(answered[k + 1..].iter().sum()) * bytes[k])
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Prediction {
        thresholds: cascade.thresholds.to_vec(),
        mean_ms: latencies.iter().sum::<f64>() / inputs.max(1) as f64,
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        answered: answered.into_iter().map(share).collect(),
        client_bytes: setting.client.map_or(0.0, |_| request_bytes(0, 4) as f64),
        link_bytes,
        agreement: share(agreeing),
        accuracy: table.label.as_ref().map(|_| share(correct)),
        exits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(ms: f64) -> LayerTimes {
        LayerTimes {
            measured_on: "test".into(),
            trunk_ms: vec![ms; 16],
            head_ms: vec![0.0; 16],
        }
    }

    #[test]
    fn parses_links() {
        let link = parse_link("100mbit/2ms").expect("parses");
        assert_eq!(link.bits_per_second, 1e8);
        assert_eq!(link.rtt, Duration::from_millis(2));
        assert_eq!(parse_link("1.5Gbit/20ms").expect("parses").bits_per_second, 1.5e9);
        assert!(parse_link("100mb/2ms").is_err());
        assert!(parse_link("0mbit/2ms").is_err());
        assert!(parse_link("100mbit").is_err());
    }

    #[test]
    fn enumerates_every_rising_layout() {
        assert_eq!(layouts(2).len(), 15);
        assert_eq!(layouts(3).len(), 15 * 14 / 2);
        assert!(layouts(3).iter().all(|l| l.len() == 3 && l[0] < l[1] && l[2] == 16));
    }

    #[test]
    fn an_input_pays_the_units_and_links_up_to_where_it_exits() {
        // Two inputs: one confident at exit 8, one nowhere.
        let setting = Setting {
            times: vec![times(1.0), times(0.5)],
            links: vec![Link {
                bits_per_second: 8e6,
                rtt: Duration::from_millis(10),
            }],
            client: None,
            wire_bytes: 4,
            hop_overhead: Duration::ZERO,
        };
        let mut table = ExitTable::default();
        for confidence_at_8 in [0.9, 0.1] {
            let mut confidence = [0.1; 16];
            confidence[7] = confidence_at_8;
            table.confidence.push(confidence);
            table.answer.push([3; 16]);
        }
        let cascade = Cascade {
            thresholds: [0.5; 15],
            exits: vec![8],
        };
        let p = predict(&setting, &table, &cascade);
        assert_eq!(p.exits, vec![8, 16]);
        let bytes = request_bytes(8, 4) as f64;
        let second = 8.0 + 10.0 + bytes / 1e3 + 8.0 * 0.5;
        assert_eq!(p.answered, vec![0.5, 0.5]);
        assert_eq!(p.link_bytes, vec![bytes / 2.0]);
        assert!((p.mean_ms - (8.0 + second) / 2.0).abs() < 1e-9, "{p:?}");
        assert!((p.p90_ms - second).abs() < 1e-9);
        assert_eq!(p.agreement, 1.0);
    }
}
