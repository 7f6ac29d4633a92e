//! A cap on open gRPC connections (`--max-connections`): each one may hold a
//! full HTTP/2 connection window of bytes its calls have not read yet, so
//! the number of connections bounds memory as `--max-in-flight` bounds the
//! calls. A connection beyond the cap is closed as it arrives (the client
//! sees it refused before sending anything, and may try elsewhere).
//!
//! A connection also ends when it has outlived `--max-connection-age` plus
//! its grace. tonic (0.14) sends the GOAWAY at the age only when it has no
//! grace, and with a grace it closes the connection at age + grace without
//! any GOAWAY, cutting whatever call is on it: so the server asks tonic for
//! the GOAWAY alone, and the hard close after the grace (for calls that
//! outlive it, and streams such as health watches that never end) is here.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Future, Stream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpIncoming};
use tracing::warn;

/// Least time between two warnings about refused connections.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A connection holding one of the unit's connection slots until it closes.
#[derive(Debug)]
pub struct Counted {
    stream: TcpStream,
    id: ConnectionId,
    /// When the connection is closed whatever is on it (age + grace).
    close_at: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
    _open: OpenGuard,
}

/// Tells a connection's calls apart from another's (its calls carry it as
/// their connect info): the per-connection call limit counts by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId(u64);

/// Keeps `dnet_connections` at the connections open.
#[derive(Debug)]
struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Accepted connections, at most `max` open at once; the others are closed
/// at once and counted in `refused`. Each is closed `lifetime` after it
/// was accepted (`None`: never).
pub fn limit(
    incoming: TcpIncoming,
    max: u32,
    lifetime: Option<Duration>,
    open: Gauge,
    refused: Counter,
) -> impl Stream<Item = io::Result<Counted>> {
    let slots = Arc::new(Semaphore::new(max as usize));
    let mut last_warning: Option<Instant> = None;
    let mut next_id = 0_u64;
    incoming.filter_map(move |accepted| {
        let outcome = match accepted {
            Err(error) => Some(Err(error)),
            Ok(stream) => match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => {
                    open.inc();
                    next_id += 1;
                    Some(Ok(Counted {
                        stream,
                        id: ConnectionId(next_id),
                        close_at: lifetime.map(|lifetime| Box::pin(tokio::time::sleep(lifetime))),
                        _slot: slot,
                        _open: OpenGuard(open.clone()),
                    }))
                }
                Err(_) => {
                    refused.inc();
                    if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        last_warning = Some(Instant::now());
                        warn!(
                            max_connections = max,
                            refused_so_far = refused.get(),
                            "connection refused: --max-connections are open"
                        );
                    }
                    None
                }
            },
        };
        std::future::ready(outcome)
    })
}

impl Connected for Counted {
    type ConnectInfo = ConnectionId;

    fn connect_info(&self) -> ConnectionId {
        self.id
    }
}

/// The connection a call came on, plain or over TLS.
#[must_use]
pub fn of<B>(request: &http::Request<B>) -> Option<ConnectionId> {
    let extensions = request.extensions();
    extensions.get::<ConnectionId>().copied().or_else(|| {
        extensions
            .get::<tonic::transport::server::TlsConnectInfo<ConnectionId>>()
            .map(|tls| *tls.get_ref())
    })
}

impl Counted {
    /// The error that ends the connection once it has outlived its age and
    /// grace. Every read and write asks, so the timer is polled (and wakes
    /// the connection) whatever the connection waits for: a client that
    /// stops reading leaves the server blocked on writes, not on reads.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let close_at = self.close_at.as_mut()?;
        close_at.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection outlived --max-connection-age and its grace",
            )
        })
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(expired) = self.expired(cx) {
            return Poll::Ready(Err(expired));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(expired) = self.expired(cx) {
            return Poll::Ready(Err(expired));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(expired) = self.expired(cx) {
            return Poll::Ready(Err(expired));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(expired) = self.expired(cx) {
            return Poll::Ready(Err(expired));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
