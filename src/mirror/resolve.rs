//! In-doubt intents: the intent is in the journal but its outcome is not, because pgbridge died
//! (or the session lost the primary) between sending COMMIT and recording the answer.
//!
//! The primary knows: `pg_xact_status(xid8)` says `committed`, `aborted` or `in progress`
//! (PostgreSQL 13+), asked with pgbridge's own credentials. Committed intents are applied,
//! aborted ones dropped; one still in progress (a prepared transaction, a session still running)
//! is asked again later. One that cannot be known (no xid, or too old for the primary's commit
//! log) is parked with an `in_doubt` divergence, or applied when the operator said to assume
//! that intents without an xid committed.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tracing::{debug, info, info_span, warn, Instrument};

use super::parked::{self, ParkedInfo};
use super::status::MirrorStats;
use super::{now_us, Journal, TxnRecord};
use crate::divergence::{record::rfc3339, Divergence, Kind, Recorder};

/// What one pass decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub committed: Vec<u64>,
    pub aborted: Vec<u64>,
    /// Still running on the primary: asked again on the next pass.
    pub in_progress: Vec<u64>,
    /// Parked with an `in_doubt` divergence (and skipped).
    pub unresolvable: Vec<u64>,
}

/// How in-doubt intents are resolved.
#[derive(Debug, Clone)]
pub struct ResolveConfig {
    pub primary: crate::config::PgUrl,
    /// Only intents without an outcome for this long (0 at startup: all of them).
    pub min_age: Duration,
    /// Apply intents that have no xid (else park them).
    pub assume_committed_without_xid: bool,
}

/// One pass over the in-doubt intents, asking `primary`.
pub async fn resolve_once(
    journal: &Journal,
    primary: &Client,
    cfg: &ResolveConfig,
    recorder: &Recorder,
) -> Result<Resolved, tokio_postgres::Error> {
    let mut pass = Pass {
        journal,
        recorder,
        out: Resolved::default(),
    };
    let cutoff = now_us() - cfg.min_age.as_micros() as i64;
    for d in journal.in_doubt() {
        if d.captured_at_us > cutoff {
            continue;
        }
        let Some(xid) = d.xid else {
            if cfg.assume_committed_without_xid {
                pass.committed(d.id);
            } else {
                pass.unresolvable(d.id, None, "no primary transaction id");
            }
            continue;
        };
        match xact_status(primary, d.id, xid).await?.as_deref() {
            Some("committed") => pass.committed(d.id),
            Some("aborted") => pass.aborted(d.id),
            Some("in progress") => pass.out.in_progress.push(d.id),
            _ => pass.unresolvable(d.id, Some(xid), UNKNOWN_OUTCOME),
        }
    }
    log_resolved(&pass.out);
    Ok(pass.out)
}

fn log_resolved(out: &Resolved) {
    if *out != Resolved::default() {
        info!(
            committed = out.committed.len(),
            aborted = out.aborted.len(),
            in_progress = out.in_progress.len(),
            unresolvable = out.unresolvable.len(),
            "in-doubt journal intents resolved"
        );
    }
}

const UNKNOWN_OUTCOME: &str = "the primary no longer knows the transaction's outcome";

/// `pg_xact_status` of `xid` on the primary; `None` when the primary refuses the xid (one from
/// its future: another cluster, a restore).
async fn xact_status(
    primary: &Client,
    id: u64,
    xid: i64,
) -> Result<Option<String>, tokio_postgres::Error> {
    let status = primary
        .query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid.to_string()])
        .await;
    match status {
        Ok(row) => Ok(row.get(0)),
        Err(e) if e.as_db_error().is_some() => {
            warn!(id, xid, error = %e, "pg_xact_status refused the xid");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// One pass's decisions, carried out on the journal as they are made.
struct Pass<'a> {
    journal: &'a Journal,
    recorder: &'a Recorder,
    out: Resolved,
}

impl Pass<'_> {
    fn committed(&mut self, id: u64) {
        let _ = self.journal.append_outcome(id, true);
        self.out.committed.push(id);
    }

    fn aborted(&mut self, id: u64) {
        let _ = self.journal.append_outcome(id, false);
        self.out.aborted.push(id);
    }

    /// Parks the intent with an `in_doubt` divergence and lets the applier go past it.
    fn unresolvable(&mut self, id: u64, xid: Option<i64>, reason: &str) {
        let txn = self.journal.read(id).ok();
        park(self.journal, id, txn.as_ref(), reason);
        let mut tables: Vec<String> = txn
            .iter()
            .flat_map(|t| t.changes.iter().map(|c| c.table.to_string()))
            .collect();
        tables.dedup();
        let mut d = Divergence::new(Kind::InDoubt, tables.join(","));
        d.primary = "unknown".into();
        d.secondary = "not applied (parked)".into();
        d.session = txn.as_ref().map(|t| t.session);
        d.detail = serde_json::json!({ "journal_id": id, "xid": xid, "reason": reason,
            "changes": txn.as_ref().map_or(0, |t| t.changes.len()) });
        self.recorder.record(d);
        let _ = self.journal.append_outcome(id, false);
        self.out.unresolvable.push(id);
    }
}

/// Keeps an in-doubt intent's frame and why in the parked directory.
fn park(journal: &Journal, id: u64, txn: Option<&TxnRecord>, reason: &str) {
    let info = ParkedInfo {
        id,
        ts: rfc3339(std::time::SystemTime::now()),
        reason: reason.to_string(),
        table: txn
            .and_then(|t| t.changes.first())
            .map(|c| c.table.to_string()),
        sqlstate: None,
    };
    if let Ok(raw) = journal.raw(id) {
        if let Err(e) = parked::park(journal.dir(), &raw, &info) {
            warn!(id, error = %e, "cannot keep the in-doubt transaction");
        }
    }
}

/// Connects to the primary with pgbridge's own credentials and resolves every in-doubt intent
/// (startup: before the applier needs them).
pub async fn resolve_at_startup(
    journal: &Journal,
    cfg: &ResolveConfig,
    recorder: &Recorder,
) -> Result<Resolved, tokio_postgres::Error> {
    if journal.in_doubt().is_empty() {
        return Ok(Resolved::default());
    }
    let (client, conn) = cfg.primary.connect().await?;
    let conn = tokio::spawn(conn);
    let cfg = ResolveConfig {
        min_age: Duration::ZERO,
        ..cfg.clone()
    };
    let r = resolve_once(journal, &client, &cfg, recorder).await;
    drop(client);
    let _ = conn.await;
    r
}

/// Resolves, every `every`, the intents left without an outcome for `cfg.min_age` (a session
/// that lost the primary mid-COMMIT). Reports the ones still running in `stats.in_progress`.
pub fn spawn_resolver(
    journal: Arc<Journal>,
    cfg: ResolveConfig,
    recorder: Arc<Recorder>,
    stats: Arc<MirrorStats>,
    every: Duration,
) -> JoinHandle<()> {
    let resolver = Resolver {
        journal,
        cfg,
        recorder,
        stats,
        client: None,
        logged: HashSet::new(),
    };
    tokio::spawn(resolver.run(every).instrument(info_span!("resolver")))
}

/// The resolver task's state.
struct Resolver {
    journal: Arc<Journal>,
    cfg: ResolveConfig,
    recorder: Arc<Recorder>,
    stats: Arc<MirrorStats>,
    /// The connection to the primary, kept between passes.
    client: Option<Client>,
    /// Intents already logged as still in progress (logged once each).
    logged: HashSet<u64>,
}

impl Resolver {
    async fn run(mut self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.pass().await;
        }
    }

    async fn pass(&mut self) {
        let cutoff = now_us() - self.cfg.min_age.as_micros() as i64;
        let in_doubt = self.journal.in_doubt();
        if !in_doubt.iter().any(|d| d.captured_at_us <= cutoff) {
            self.stats.in_progress.store(0, Ordering::Relaxed);
            return;
        }
        if !self.connect().await {
            return;
        }
        let Some(c) = self.client.as_ref() else {
            return;
        };
        match resolve_once(&self.journal, c, &self.cfg, &self.recorder).await {
            Ok(r) => self.report(&r),
            Err(e) => {
                debug!(error = %e, "resolving in-doubt intents failed");
                self.client = None;
            }
        }
    }

    /// Connects to the primary unless connected already; `false` when it cannot.
    async fn connect(&mut self) -> bool {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return true;
        }
        match self.cfg.primary.connect().await {
            Ok((c, conn)) => {
                tokio::spawn(conn.in_current_span());
                self.client = Some(c);
                true
            }
            Err(e) => {
                let error = crate::net::error_text(&e);
                warn!(%error, "cannot reach the primary to resolve in-doubt intents");
                false
            }
        }
    }

    fn report(&mut self, r: &Resolved) {
        self.stats
            .in_progress
            .store(r.in_progress.len() as u64, Ordering::Relaxed);
        for id in &r.in_progress {
            if self.logged.insert(*id) {
                warn!(id, "in-doubt intent still in progress on the primary");
            }
        }
    }
}
