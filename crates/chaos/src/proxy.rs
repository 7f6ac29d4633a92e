//! A slow, unreliable TCP link: delays every chunk and cuts every connection
//! at a fixed interval.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Starts the proxy to `upstream`; returns its port. Runs until the process ends.
pub async fn start(upstream: String, delay: Duration, cut_every: Duration) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (cut_tx, cut_rx) = watch::channel(0_u64);
    tokio::spawn(async move {
        let mut cuts = 0;
        loop {
            tokio::time::sleep(cut_every).await;
            cuts += 1;
            let _ = cut_tx.send(cuts);
        }
    });
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let (upstream, cut) = (upstream.clone(), cut_rx.clone());
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                let mut cut_a = cut.clone();
                let mut cut_b = cut;
                cut_a.borrow_and_update();
                cut_b.borrow_and_update();
                tokio::select! {
                    () = pump(ri, wo, delay) => {}
                    () = pump(ro, wi, delay) => {}
                    _ = cut_a.changed() => {}
                    _ = cut_b.changed() => {}
                }
            });
        }
    });
    Ok(port)
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    let mut buffer = vec![0_u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0 {
            return;
        }
        tokio::time::sleep(delay).await;
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
