//! The mirror's figures: `/api/status` (`mirror`) and the `pgbridge_mirror_*` metrics.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{now_us, Journal};

/// Counters the applier and the resolver keep; read with [`MirrorStats::report`].
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// The last journal id applied (or skipped) on the secondary.
    pub applied_seq: AtomicU64,
    /// Journal transactions applied to the secondary since start.
    pub applied_txns: AtomicU64,
    /// Retries of transient secondary errors since start.
    pub retries: AtomicU64,
    /// The applier is stopped at a parked transaction (`on_error = "halt"`).
    pub halted: AtomicBool,
    /// The applier has a working connection to the secondary.
    pub connected: AtomicBool,
    /// In-doubt intents the primary reports still in progress (e.g. prepared transactions).
    pub in_progress: AtomicU64,
    /// Ids of parked transactions.
    pub parked: Mutex<BTreeSet<u64>>,
    pub last_error: Mutex<Option<String>>,
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

/// The mirror's figures now: what `/api/status` and the gates read, and more.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MirrorReport {
    pub journal_seq: u64,
    pub applied_seq: u64,
    /// Age of the oldest committed transaction not yet applied.
    pub lag_seconds: f64,
    pub lag_transactions: u64,
    pub parked: u64,
    pub applied_per_second: f64,
    pub retries: u64,
    pub in_doubt: u64,
    pub in_progress: u64,
    pub journal_bytes: u64,
    pub journal_segments: u64,
    /// Above `max_journal_bytes`: writers wait or are refused.
    pub journal_full: bool,
    /// The last journal write failed with ENOSPC.
    pub disk_full: bool,
    pub halted: bool,
    pub connected: bool,
    pub fsyncs: u64,
    /// Intents written: with `fsyncs`, how many commits one fsync carries (group commit).
    pub appends: u64,
    pub last_error: Option<String>,
}

impl MirrorStats {
    /// Notes the applied count now, for `applied_per_second` over the last 10 s.
    pub fn sample(&self) {
        let now = Instant::now();
        let n = self.applied_txns.load(Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.push_back((now, n));
        while s.len() > 2
            && s.front()
                .is_some_and(|(t, _)| now - *t > Duration::from_secs(10))
        {
            s.pop_front();
        }
    }

    fn rate(&self) -> f64 {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        match (s.front(), s.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / (*t1 - *t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    /// The figures now; also sets the `pgbridge_mirror_*` gauges.
    pub fn report(&self, journal: &Journal) -> MirrorReport {
        let (pending, oldest) = journal.pending();
        let lag_seconds = oldest.map_or(0.0, |t| ((now_us() - t).max(0)) as f64 / 1e6);
        let r = MirrorReport {
            journal_seq: journal.last_id(),
            applied_seq: self.applied_seq.load(Ordering::Relaxed),
            lag_seconds,
            lag_transactions: pending,
            parked: self.parked.lock().unwrap_or_else(|e| e.into_inner()).len() as u64,
            applied_per_second: self.rate(),
            retries: self.retries.load(Ordering::Relaxed),
            in_doubt: journal.in_doubt().len() as u64,
            in_progress: self.in_progress.load(Ordering::Relaxed),
            journal_bytes: journal.bytes(),
            journal_segments: journal.segments() as u64,
            journal_full: journal.counters.full.load(Ordering::Relaxed),
            disk_full: journal.counters.no_space.load(Ordering::Relaxed),
            halted: self.halted.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            fsyncs: journal.counters.fsyncs.load(Ordering::Relaxed),
            appends: journal.counters.appends.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        };
        r.export();
        r
    }
}

impl MirrorReport {
    /// The figures a gate judges a switch on, as its audit line and dry run show them.
    pub fn gate_evidence(&self) -> serde_json::Value {
        serde_json::json!({
            "lag_seconds": self.lag_seconds,
            "lag_transactions": self.lag_transactions,
            "parked": self.parked,
        })
    }

    fn export(&self) {
        use metrics::gauge;
        gauge!("pgbridge_mirror_journal_seq").set(self.journal_seq as f64);
        gauge!("pgbridge_mirror_applied_seq").set(self.applied_seq as f64);
        gauge!("pgbridge_mirror_lag_seconds").set(self.lag_seconds);
        gauge!("pgbridge_mirror_lag_transactions").set(self.lag_transactions as f64);
        gauge!("pgbridge_mirror_parked").set(self.parked as f64);
        gauge!("pgbridge_mirror_applied_per_second").set(self.applied_per_second);
        gauge!("pgbridge_mirror_in_doubt").set(self.in_doubt as f64);
        gauge!("pgbridge_mirror_journal_bytes").set(self.journal_bytes as f64);
        gauge!("pgbridge_mirror_journal_full").set(f64::from(u8::from(self.journal_full)));
        gauge!("pgbridge_mirror_disk_full").set(f64::from(u8::from(self.disk_full)));
        gauge!("pgbridge_mirror_halted").set(f64::from(u8::from(self.halted)));
        gauge!("pgbridge_mirror_secondary_connected").set(f64::from(u8::from(self.connected)));
        metrics::counter!("pgbridge_mirror_journal_fsyncs_total").absolute(self.fsyncs);
        metrics::counter!("pgbridge_mirror_journal_appends_total").absolute(self.appends);
    }
}
