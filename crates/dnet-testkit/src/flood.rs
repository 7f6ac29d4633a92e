//! Many large `Compute` calls at once, over raw HTTP/2 (the `h2` crate
//! tonic's transport uses): every call sends the same message buffer, shared
//! and never copied, so the client's memory does not grow with the calls it
//! has in flight, and what is measured is the unit's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use dnet_proto::ComputationRequest;
use prost::Message;
use tokio::net::TcpStream;

/// How one flooded call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The gRPC status code (0 = OK), or `None` when the call broke.
    pub code: Option<i32>,
    /// Its grpc-message, or what broke.
    pub message: String,
    /// When it ended, from the start of the flood.
    pub after: Duration,
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

/// Opens `connections` HTTP/2 connections to `address` and sends `calls`
/// `Compute` calls of `message` (see [`framed`]) on each, all at once, each
/// with `timeout`; returns how each ended.
///
/// # Errors
/// A connection cannot be opened.
pub async fn flood(
    address: SocketAddr,
    connections: usize,
    calls: usize,
    message: Bytes,
    timeout: Duration,
) -> anyhow::Result<Vec<Ended>> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let tcp = TcpStream::connect(address).await.context("connect")?;
        let (client, connection) = h2::client::handshake(tcp).await.context("HTTP/2 handshake")?;
        tokio::spawn(connection);
        for _ in 0..calls {
            let (client, message) = (client.clone(), message.clone());
            tasks.push(tokio::spawn(async move {
                let (code, text) = match call(client, address, message, timeout).await {
                    Ok((code, text)) => (Some(code), text),
                    Err(error) => (None, format!("{error:#}")),
                };
                Ended {
                    code,
                    message: text,
                    after: started.elapsed(),
                }
            }));
        }
    }
    let mut ended = Vec::new();
    for task in tasks {
        ended.push(task.await.context("a call's task")?);
    }
    Ok(ended)
}

/// One call: the request, then its status (from the headers of a
/// trailers-only answer, else from the trailers).
async fn call(
    client: h2::client::SendRequest<Bytes>,
    address: SocketAddr,
    message: Bytes,
    timeout: Duration,
) -> anyhow::Result<(i32, String)> {
    let mut client = client.ready().await?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{address}/unit.DNet/Compute"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", format!("{}m", timeout.as_millis()))
        .body(())?;
    let (response, mut stream) = client.send_request(request, false)?;
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
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_owned();
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
