//! Prometheus label sets the programs share.

use prometheus_client::encoding::EncodeLabelSet;

/// How a call or a reply ended: `SUCCESS`, `NOT_SUCCESS`, `ERROR`, or a
/// gRPC code name (`dnet_requests_total`, `dnet_worker_replies_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

impl StatusLabel {
    #[must_use]
    pub fn new(status: &str) -> Self {
        Self {
            status: status.to_owned(),
        }
    }
}
