//! The gRPC client to the next unit of the cascade.

use std::time::Duration;

use dnet_proto::{ComputationRequest, ComputationResponse, DNetClient};
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use crate::error::Error;
use dnet_common::http2;

/// How long connecting to the next unit may take before it counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A lazily connected client to the next unit; reconnects by itself.
#[derive(Clone, Debug)]
pub struct NextUnit {
    /// As given on the command line, for error messages and logs.
    address: String,
    client: DNetClient<Channel>,
}

impl NextUnit {
    /// A client for `address` (`host:port`, or a full URI), over TLS when `tls` is given.
    ///
    /// # Errors
    /// When `address` is not a valid URI authority.
    pub fn new(address: &str, max_message_bytes: usize, tls: Option<ClientTlsConfig>) -> Result<Self, String> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let uri = if address.contains("://") {
            address.to_owned()
        } else {
            format!("{scheme}://{address}")
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| format!("--next-address '{address}' is not a host:port address: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(http2::STREAM_WINDOW)
            .initial_connection_window_size(http2::CONNECTION_WINDOW)
            .max_frame_size(http2::MAX_FRAME);
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS to the next unit {address}: {e}"))?;
        }
        let client = DNetClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Ok(Self {
            address: address.to_owned(),
            client,
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
