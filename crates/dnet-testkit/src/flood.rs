//! `Compute` calls over raw HTTP/2 (the `h2` crate tonic's transport uses),
//! for what a gRPC client does not let a test do: many large calls at once
//! (every call sends the same message buffer, shared and never copied, so
//! the client's memory does not grow with the calls it has in flight, and
//! what is measured is the unit's), a body that follows its headers late,
//! and a call that holds a slot by never sending its body.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use dnet_proto::ComputationRequest;
use prost::Message;
use tokio::net::TcpStream;

/// How one flooded call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The unit answered with this gRPC status code (0 = OK) and message.
    Status(i32, String),
    /// HTTP/2 refused the stream before any processing (REFUSED_STREAM):
    /// the server had more open streams than it takes.
    RefusedStream,
    /// The call broke: what broke.
    Broken(String),
}

impl Ended {
    /// Refused before its message was read: RESOURCE_EXHAUSTED from the
    /// unit's admission, or REFUSED_STREAM from HTTP/2.
    #[must_use]
    pub fn refused(&self) -> bool {
        matches!(self, Ended::RefusedStream) || matches!(self, Ended::Status(8, _))
    }
}

/// Calls under way; [`Flood::ended`] says how those that ended did.
#[derive(Debug)]
pub struct Flood {
    ended: Arc<Mutex<Vec<Ended>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Flood {
    /// How the calls that have ended so far ended.
    #[must_use]
    pub fn ended(&self) -> Vec<Ended> {
        self.ended.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits for every call to end.
    ///
    /// # Errors
    /// A call's task panicked.
    pub async fn finish(self) -> anyhow::Result<Vec<Ended>> {
        let Flood { ended, tasks } = self;
        for task in tasks {
            task.await.context("a call's task")?;
        }
        let ended = ended.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Ok(ended)
    }
}

/// A request framed as gRPC sends it: a 5-byte prefix (not compressed, the
/// length) and the encoded message.
#[must_use]
pub fn framed(request: &ComputationRequest) -> Bytes {
    let message = request.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    frame.put_slice(&message);
    frame.freeze()
}

/// Opens `connections` HTTP/2 connections to `address` and starts `calls`
/// `Compute` calls of `message` (see [`framed`]) on each, all at once, each
/// with `timeout`.
///
/// # Errors
/// A connection cannot be opened.
pub async fn flood(
    address: SocketAddr,
    connections: usize,
    calls: usize,
    message: Bytes,
    timeout: Duration,
) -> anyhow::Result<Flood> {
    let ended = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = connect(address).await?;
        for _ in 0..calls {
            let (client, message, ended) = (client.clone(), message.clone(), Arc::clone(&ended));
            tasks.push(tokio::spawn(async move {
                let outcome = call(client, address, message, timeout, Duration::ZERO).await;
                ended.lock().unwrap_or_else(PoisonError::into_inner).push(outcome);
            }));
        }
    }
    Ok(Flood { ended, tasks })
}

/// One `Compute` call of `message` whose body follows its headers only
/// after `body_delay` (a slow link, a slow client): how it ended.
///
/// # Errors
/// The connection cannot be opened.
pub async fn call_with_body_delay(
    address: SocketAddr,
    message: Bytes,
    timeout: Duration,
    body_delay: Duration,
) -> anyhow::Result<Ended> {
    let client = connect(address).await?;
    Ok(call(client, address, message, timeout, body_delay).await)
}

/// A `Compute` call whose headers are sent and whose body never is: it
/// holds one of the unit's call slots (admission takes it on the headers)
/// until dropped or until `timeout`.
#[derive(Debug)]
pub struct HeldSlot {
    _stream: h2::SendStream<Bytes>,
    _response: h2::client::ResponseFuture,
    _connection: tokio::task::JoinHandle<()>,
}

/// Takes one of the unit's call slots at `address` for up to `timeout` (see [`HeldSlot`]).
///
/// # Errors
/// The connection cannot be opened, or the unit refuses the stream.
pub async fn hold_slot(address: SocketAddr, timeout: Duration) -> anyhow::Result<HeldSlot> {
    let tcp = TcpStream::connect(address).await.context("connect")?;
    let (client, connection) = h2::client::handshake(tcp).await.context("HTTP/2 handshake")?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await?;
    let (response, stream) = client.send_request(compute_headers(address, timeout)?, false)?;
    Ok(HeldSlot {
        _stream: stream,
        _response: response,
        _connection: connection,
    })
}

async fn connect(address: SocketAddr) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let tcp = TcpStream::connect(address).await.context("connect")?;
    let (client, connection) = h2::client::handshake(tcp).await.context("HTTP/2 handshake")?;
    tokio::spawn(connection);
    Ok(client)
}

/// One call: the request, then its status (from the headers of a
/// trailers-only answer, else from the trailers).
async fn call(
    client: h2::client::SendRequest<Bytes>,
    address: SocketAddr,
    message: Bytes,
    timeout: Duration,
    body_delay: Duration,
) -> Ended {
    match exchange(client, address, message, timeout, body_delay).await {
        Ok((code, text)) => Ended::Status(code, text),
        Err(error) => match error.downcast_ref::<h2::Error>() {
            Some(h2) if h2.reason() == Some(h2::Reason::REFUSED_STREAM) => Ended::RefusedStream,
            _ => Ended::Broken(format!("{error:#}")),
        },
    }
}

/// The headers of a `Compute` call to `address` with `timeout`.
fn compute_headers(address: SocketAddr, timeout: Duration) -> anyhow::Result<http::Request<()>> {
    Ok(http::Request::builder()
        .method("POST")
        .uri(format!("http://{address}/unit.DNet/Compute"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", format!("{}m", timeout.as_millis()))
        .body(())?)
}

async fn exchange(
    client: h2::client::SendRequest<Bytes>,
    address: SocketAddr,
    message: Bytes,
    timeout: Duration,
    body_delay: Duration,
) -> anyhow::Result<(i32, String)> {
    let mut client = client.ready().await?;
    let (response, mut stream) = client.send_request(compute_headers(address, timeout)?, false)?;
    if !body_delay.is_zero() {
        tokio::time::sleep(body_delay).await;
    }
    // Queued by h2 and sent as flow control allows; dropped if the server
    // refuses the call first.
    stream.send_data(message, true)?;
    let response = response.await?;
    if let Some(status) = grpc_status(response.headers()) {
        return Ok(status);
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data?;
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body.trailers().await?.context("no trailers")?;
    grpc_status(&trailers).context("no grpc-status in the trailers")
}

fn grpc_status(headers: &http::HeaderMap) -> Option<(i32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    // Percent-encoded on the wire (gRPC over HTTP/2): decoded to read.
    let message = headers
        .get("grpc-message")
        .map(|m| {
            percent_encoding::percent_decode(m.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    Some((code, message))
}

/// The most memory the process `pid` has held at once (VmHWM), in bytes.
///
/// # Errors
/// The process is gone, or this is not Linux.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("read /proc/PID/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kib * 1024)
}
