//! Prometheus label sets the programs share.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};

/// How a call or a reply ended: `SUCCESS`, `NOT_SUCCESS`, `ERROR`, or a
/// gRPC code name, and whether it was shadow work (`dnet_requests_total`,
/// `dnet_worker_replies_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
    pub traffic: Traffic,
}

impl StatusLabel {
    #[must_use]
    pub fn new(status: &str, traffic: Traffic) -> Self {
        Self {
            status: status.to_owned(),
            traffic,
        }
    }
}

/// Label of the metrics that shadow work touches besides the counters above.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabel {
    pub traffic: Traffic,
}

impl TrafficLabel {
    #[must_use]
    pub fn of(shadow: bool) -> Self {
        Self {
            traffic: Traffic::of(shadow),
        }
    }
}

/// Ordinary calls, or shadow work (`--shadow-rate`: samples answered early
/// sent on to the last exit to measure agreement), which the `dnet-shadow`
/// header alone marks.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Traffic {
    ordinary,
    shadow,
}

impl Traffic {
    #[must_use]
    pub fn of(shadow: bool) -> Self {
        if shadow {
            Traffic::shadow
        } else {
            Traffic::ordinary
        }
    }
}
