//! The gRPC client to the next unit of the cascade: its calls spread over
//! every live address of `--next-address` (`dnet_common::balance`).

use dnet_common::balance::{endpoints, Balanced};
use dnet_proto::{ComputationRequest, ComputationResponse, DNetClient};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Status;

use crate::error::Error;
use dnet_common::never_sent::never_sent;

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
    /// `NextDown` when none of its addresses is serving, `NextNotSent` when
    /// the call could not be sent (nothing reached it: safe to try again),
    /// `NextBroken` when the call broke after it was sent (it may have been
    /// computed), `NextDeadline` when it does not answer by `deadline`, and
    /// `Next` with its code for any error it answered itself.
    pub async fn compute(&self, request: ComputationRequest, deadline: Instant) -> Result<ComputationResponse, Error> {
        self.call(request, deadline, false).await
    }

    /// Calls the next unit with shadow work: marked so (its admission refuses
    /// it first under load), never retried by the caller.
    ///
    /// # Errors
    /// As [`NextUnit::compute`].
    pub async fn compute_shadow(
        &self,
        request: ComputationRequest,
        deadline: Instant,
    ) -> Result<ComputationResponse, Error> {
        self.call(request, deadline, true).await
    }

    async fn call(
        &self,
        request: ComputationRequest,
        deadline: Instant,
        shadow: bool,
    ) -> Result<ComputationResponse, Error> {
        let address = self.address.clone();
        if self.balanced.live() == 0 {
            // With no address to call, the balancer would wait until the deadline.
            return Err(Error::NextDown { address });
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut request = tonic::Request::new(request);
        request.set_timeout(remaining);
        if shadow {
            request.metadata_mut().insert(
                dnet_proto::SHADOW_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        // The call goes on in this unit's trace (when traces are on).
        if dnet_common::traces::enabled() {
            for (name, value) in dnet_common::traces::headers_of(&tracing::Span::current()) {
                if let Ok(value) = value.parse() {
                    request.metadata_mut().insert(name, value);
                }
            }
        }
        let mut client = self.client.clone();
        match tokio::time::timeout_at(deadline, client.compute(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Err(_) => Err(Error::NextDeadline { address }),
            Ok(Err(status)) => Err(classify(address, &status, deadline)),
        }
    }
}

/// How far a failed call got (gRPC's retry design, gRFC A6): a status the
/// next unit sent is its answer; a transport failure either stopped the
/// call before anything was sent, or broke it after the unit may have
/// started computing.
fn classify(address: String, status: &Status, deadline: Instant) -> Error {
    let message = status.message().to_owned();
    // At the deadline tonic's own timer (from the call's grpc-timeout) may
    // fire before ours, as a transport error: either way the next unit did
    // not answer in time.
    if Instant::now() >= deadline {
        return Error::NextDeadline { address };
    }
    if std::error::Error::source(status).is_none() {
        return Error::Next {
            address,
            code: status.code(),
            message,
        };
    }
    if never_sent(status) {
        Error::NextNotSent { address, message }
    } else {
        Error::NextBroken { address, message }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dnet_proto::{DNet, DNetServer, QstatusRequest, QstatusResponse};
    use tokio::net::TcpListener;
    use tonic::transport::Server;

    use super::*;

    /// How a call to `address` failed, as `NextUnit::compute` sees it.
    async fn failure(address: std::net::SocketAddr) -> Error {
        let channel = Channel::from_shared(format!("http://{address}"))
            .expect("uri")
            .connect_lazy();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = DNetClient::new(channel)
            .compute(ComputationRequest::default())
            .await
            .expect_err("the call fails");
        classify(address.to_string(), &status, deadline)
    }

    #[tokio::test]
    async fn a_connection_refused_was_never_sent() {
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = closed.local_addr().expect("address");
        drop(closed);
        assert!(matches!(failure(address).await, Error::NextNotSent { .. }));
    }

    struct Unavailable;

    #[tonic::async_trait]
    impl DNet for Unavailable {
        async fn compute(
            &self,
            _: tonic::Request<ComputationRequest>,
        ) -> Result<tonic::Response<ComputationResponse>, Status> {
            Err(Status::unavailable("next unit c:1 is unavailable"))
        }

        async fn qstatus(&self, _: tonic::Request<QstatusRequest>) -> Result<tonic::Response<QstatusResponse>, Status> {
            Err(Status::unimplemented("not here"))
        }
    }

    #[tokio::test]
    async fn unavailable_answered_by_the_next_unit_is_its_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            Server::builder()
                .add_service(DNetServer::new(Unavailable))
                .serve_with_incoming(incoming),
        );
        match failure(address).await {
            Error::Next { code, message, .. } => {
                assert_eq!(code, tonic::Code::Unavailable);
                assert!(message.contains("c:1"), "{message}");
            }
            other => panic!("answered by the next unit, not {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_connection_that_breaks_after_the_request_may_have_reached_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        // A server that takes the request, then dies without answering.
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut connection = h2::server::handshake(socket).await.expect("handshake");
            let _request = connection.accept().await;
        });
        assert!(matches!(failure(address).await, Error::NextBroken { .. }));
    }
}
