//! Every ERROR answer a unit gives (a refused pickle, a bad tensor, a poison
//! request) is logged with its reason, a few per second at most: a metric
//! alone says that requests are refused, not why.

use dnet_common::log_limit::LogLimit;
use dnet_proto::{ComputationResponse, Data, StatusCode};
use tracing::warn;

/// ERROR answers logged per second, at most.
const PER_SECOND: u32 = 10;
/// The most of a reason a log line shows.
const REASON_CHARS: usize = 300;

/// The log of ERROR answers.
#[derive(Debug)]
pub struct Refusals(LogLimit);

impl Default for Refusals {
    fn default() -> Self {
        Self(LogLimit::new(PER_SECOND))
    }
}

impl Refusals {
    /// Logs `response` when it is an ERROR answer (to the request whose
    /// correlation id is `id`, on a queue).
    pub fn log_if_error(&self, response: &ComputationResponse, id: Option<&str>) {
        if response.status != StatusCode::Error as i32 {
            return;
        }
        let Some(left_out) = self.0.allow() else { return };
        let reason = match &response.data {
            Some(Data::ErrorMessage(message)) => message.chars().take(REASON_CHARS).collect(),
            _ => String::new(),
        };
        let start_layer = response.hops.first().map(|hop| hop.start_layer);
        warn!(id, start_layer, %reason, refusals_not_logged = left_out, "request answered ERROR");
    }
}
