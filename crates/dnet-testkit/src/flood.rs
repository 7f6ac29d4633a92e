//! Many large `Compute` calls at once, over raw HTTP/2 (the `h2` crate
//! tonic's transport uses): every call sends the same message buffer, shared
//! and never copied, so the client's memory does not grow with the calls it
//! has in flight, and what is measured is the unit's.

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
        let tcp = TcpStream::connect(address).await.context("connect")?;
        let (client, connection) = h2::client::handshake(tcp).await.context("HTTP/2 handshake")?;
        tokio::spawn(connection);
        for _ in 0..calls {
            let (client, message, ended) = (client.clone(), message.clone(), Arc::clone(&ended));
            tasks.push(tokio::spawn(async move {
                let outcome = call(client, address, message, timeout).await;
                ended.lock().unwrap_or_else(PoisonError::into_inner).push(outcome);
            }));
        }
    }
    Ok(Flood { ended, tasks })
}

/// One call: the request, then its status (from the headers of a
/// trailers-only answer, else from the trailers).
async fn call(client: h2::client::SendRequest<Bytes>, address: SocketAddr, message: Bytes, timeout: Duration) -> Ended {
    match exchange(client, address, message, timeout).await {
        Ok((code, text)) => Ended::Status(code, text),
        Err(error) => match error.downcast_ref::<h2::Error>() {
            Some(h2) if h2.reason() == Some(h2::Reason::REFUSED_STREAM) => Ended::RefusedStream,
            _ => Ended::Broken(format!("{error:#}")),
        },
    }
}

async fn exchange(
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
