//! The gRPC client to the next unit of the cascade: its calls spread over
//! every live address of `--next-address` (`dnet_common::balance`).

use dnet_common::balance::{endpoints, Balanced};
use dnet_proto::{ComputationRequest, ComputationResponse, DNetClient};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Code;

use crate::error::Error;

/// A client to the next unit; reconnects and follows its addresses by itself.
#[derive(Clone, Debug)]
pub struct NextUnit {
    /// As given on the command line, for error messages and logs.
    address: String,
    client: DNetClient<Channel>,
    balanced: Balanced,
}

impl NextUnit {
    /// A client for `address` (`host:port`, a comma list of them, or names
    /// that resolve to several addresses), over TLS when `tls` is given;
    /// `live` counts the addresses in use.
    ///
    /// # Errors
    /// When `address` is not a comma list of `host:port`.
    pub async fn new(
        address: &str,
        max_message_bytes: usize,
        tls: Option<ClientTlsConfig>,
        live: Gauge,
    ) -> Result<Self, String> {
        let balanced = Balanced::start(address, endpoints(tls), live)
            .await
            .map_err(|e| format!("--next-address '{address}': {e}"))?;
        let client = DNetClient::new(balanced.channel.clone())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Ok(Self {
            address: address.to_owned(),
            client,
            balanced,
        })
    }

    /// The address as configured.
    #[must_use]
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Calls the next unit's `Compute`, passing on the remaining deadline.
    ///
    /// # Errors
    /// `NextUnavailable` when it cannot be reached, `NextDeadline` when it does
    /// not answer by `deadline`, `Next` with its code for any other error.
    pub async fn compute(&self, request: ComputationRequest, deadline: Instant) -> Result<ComputationResponse, Error> {
        if self.balanced.live() == 0 {
            // With no address to call, the balancer would wait until the deadline.
            return Err(Error::NextUnavailable {
                address: self.address.clone(),
                message: "none of its addresses accepts connections".to_owned(),
            });
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut request = tonic::Request::new(request);
        request.set_timeout(remaining);
        let mut client = self.client.clone();
        let answer = tokio::time::timeout_at(deadline, client.compute(request)).await;
        let address = self.address.clone();
        match answer {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Err(_) => Err(Error::NextDeadline { address }),
            Ok(Err(status)) => Err(match status.code() {
                // The client's own timer, or a transport failure (refused, reset).
                Code::Cancelled | Code::DeadlineExceeded if Instant::now() >= deadline => {
                    Error::NextDeadline { address }
                }
                Code::Unavailable | Code::Unknown => Error::NextUnavailable {
                    address,
                    message: status.message().to_owned(),
                },
                code => Error::Next {
                    address,
                    code,
                    message: status.message().to_owned(),
                },
            }),
        }
    }
}
