//! The running applier as sessions and the admin API hold it: wait for an intent to be
//! applied (sync mode), the applied position, the status figures, and stopping the task.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::chunk::ChunkPort;
use crate::mirror::status::{MirrorReport, MirrorStats};
use crate::mirror::Journal;

/// Why a sync-mode wait ended without the transaction applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("the secondary has not applied the transaction in time")]
    Timeout,
    #[error("the secondary refused the transaction; it is parked")]
    Parked,
    #[error("the applier has stopped")]
    Stopped,
}

/// The running applier, as the session and the admin API see it.
pub struct ApplierHandle {
    journal: Arc<Journal>,
    stats: Arc<MirrorStats>,
    applied: watch::Receiver<u64>,
    task: JoinHandle<()>,
    ticker: JoinHandle<()>,
    port: ChunkPort,
}

impl ApplierHandle {
    pub(super) fn new(
        journal: Arc<Journal>,
        stats: Arc<MirrorStats>,
        applied: watch::Receiver<u64>,
        task: JoinHandle<()>,
        ticker: JoinHandle<()>,
        port: ChunkPort,
    ) -> ApplierHandle {
        ApplierHandle {
            journal,
            stats,
            applied,
            task,
            ticker,
            port,
        }
    }

    /// Sync mode: waits until the secondary applied intent `id` (or gave up on it).
    /// Cancel safe.
    pub async fn wait_applied(&self, id: u64, timeout: Duration) -> Result<(), WaitError> {
        let mut rx = self.applied.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|&applied| applied >= id).await.map(|_| ())
        })
        .await;
        match waited {
            Err(_) => Err(WaitError::Timeout),
            Ok(Err(_)) => Err(WaitError::Stopped),
            Ok(Ok(_)) => {
                let parked = self
                    .stats
                    .parked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&id);
                if parked {
                    Err(WaitError::Parked)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The last id applied (or skipped).
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// A receiver of the applied id, for whoever prefers to wait on it directly.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Where backfill chunks are handed to the applier.
    pub fn chunk_port(&self) -> ChunkPort {
        self.port.clone()
    }

    pub fn stats(&self) -> &Arc<MirrorStats> {
        &self.stats
    }

    /// The status figures now.
    pub fn report(&self) -> MirrorReport {
        self.stats.report(&self.journal)
    }

    /// Stops the applier task (a transaction in flight is rolled back by the secondary).
    pub fn stop(&self) {
        self.task.abort();
        self.ticker.abort();
    }
}

impl Drop for ApplierHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
