//! The computation queue's counts, read every 250 ms while a session
//! lives: admission works from the waiting messages, and `Qstatus` is
//! answered from the last read, so a flood of `Qstatus` calls costs the
//! broker nothing.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::queue_client::Inner;
use crate::queue_session::Session;

/// How often the queue's counts are read.
pub const QUEUE_POLL: Duration = Duration::from_millis(250);

/// The queue's counts, as last read.
#[derive(Debug, Default)]
pub struct QueueCounts {
    pub waiting: AtomicU64,
    pub consumers: AtomicU32,
    /// The session generation the counts were read in (0: none yet).
    pub read_in: AtomicU64,
}

/// Reads the computation queue's counts every QUEUE_POLL with a passive
/// declare on a channel of its own, until `stop`; a channel that fails is
/// replaced on the next round, for as long as the session lives.
pub async fn poll_queue(inner: Arc<Inner>, session: Arc<Session>, stop: CancellationToken) {
    let queue = inner.settings.queue.as_str();
    loop {
        if let Ok(channel) = session.connection.create_channel().await {
            loop {
                let declared = channel
                    .queue_declare(
                        queue.into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await;
                match declared {
                    Ok(status) => inner.store_counts(
                        u64::from(status.message_count()),
                        status.consumer_count(),
                        session.generation,
                    ),
                    // The channel is closed by the failed declare (e.g. the queue
                    // was deleted): open another on the next round. Until a read
                    // succeeds, no counts: Qstatus says so, admission counts none.
                    Err(error) => {
                        debug!(%error, "cannot read the queue's counts");
                        inner.store_counts(0, 0, 0);
                        break;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(QUEUE_POLL) => {}
                    () = stop.cancelled() => {
                        let _ = channel.close(200, "stopping".into()).await;
                        return;
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(QUEUE_POLL) => {}
            () = stop.cancelled() => return,
        }
    }
}

impl QueueCounts {
    pub fn store(&self, waiting: u64, consumers: u32, generation: u64) {
        self.waiting.store(waiting, Ordering::Relaxed);
        self.consumers.store(consumers, Ordering::Relaxed);
        self.read_in.store(generation, Ordering::Relaxed);
    }
}
