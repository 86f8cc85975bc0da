//! The reverse mirror's figures, kept by its task and read by whoever reports them (status,
//! metrics, the write switch waiting for the queue to drain).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Counters the reverse applier keeps; read with [`ReverseStats::report`].
#[derive(Debug, Default)]
pub struct ReverseStats {
    /// Changes applied to the primary since start.
    pub applied: AtomicU64,
    /// The seq of the last change applied to the primary.
    pub last_seq: AtomicI64,
    /// Changes of ruled sources still queued on the secondary (at the last refresh).
    pub queued: AtomicU64,
    /// Queued changes whose source has no rule: they stay queued.
    pub unrouted: AtomicU64,
    /// Age of the oldest queued change, in microseconds (0 when none).
    lag_us: AtomicU64,
    /// Refreshes of `queued` completed, so a waiter knows one began after it did.
    refreshes: AtomicU64,
    pub secondary_connected: AtomicBool,
    pub primary_connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// The figures now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReverseReport {
    pub applied: u64,
    pub last_seq: i64,
    pub queued: u64,
    pub unrouted: u64,
    pub lag_seconds: f64,
    pub secondary_connected: bool,
    pub primary_connected: bool,
    pub last_error: Option<String>,
}

impl ReverseStats {
    pub fn report(&self) -> ReverseReport {
        ReverseReport {
            applied: self.applied.load(Ordering::Relaxed),
            last_seq: self.last_seq.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            unrouted: self.unrouted.load(Ordering::Relaxed),
            lag_seconds: self.lag_us.load(Ordering::Relaxed) as f64 / 1e6,
            secondary_connected: self.secondary_connected.load(Ordering::Relaxed),
            primary_connected: self.primary_connected.load(Ordering::Relaxed),
            last_error: self.last_error(),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// What a count of the queue found.
    pub(super) fn refreshed(&self, queued: u64, unrouted: u64, lag_seconds: f64) {
        self.queued.store(queued, Ordering::Relaxed);
        self.unrouted.store(unrouted, Ordering::Relaxed);
        self.lag_us
            .store((lag_seconds.max(0.0) * 1e6) as u64, Ordering::Relaxed);
        self.refreshes.fetch_add(1, Ordering::Release);
    }

    pub(super) fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Acquire)
    }

    /// A page of `n` changes up to `last_seq` was committed on the primary.
    pub(super) fn applied_page(&self, n: usize, last_seq: i64) {
        self.applied.fetch_add(n as u64, Ordering::Relaxed);
        self.last_seq.store(last_seq, Ordering::Relaxed);
        metrics::counter!("pgbridge_reverse_applied_total").increment(n as u64);
    }
}
