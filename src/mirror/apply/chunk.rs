//! Backfill chunks on the applier's ordered path: a chunk of source rows read in one snapshot is
//! applied by the applier task itself, once every journal intent up to the chunk's ordering
//! point is applied and before any intent after it, without the keys that journaled
//! transactions invisible to its snapshot wrote (src/migrate/mod.rs argues why that is exact).
//! While a table is watched, the applier notes the key of every change it applies to it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Client;
use tracing::warn;

use super::plan::{KeyValues, Target};
use super::task::Txns;
use super::{Applier, ApplyError};
use crate::mirror::status::{MirrorReport, MirrorStats};
use crate::mirror::{ChangeOp, Journal, Row, Value};
use crate::rules::TableName;

/// Keys whose canonical form one statement asks for.
const KEYS_PER_STATEMENT: usize = 512;

/// A key in a settings-independent form: each key column's binary value as the server sends it.
pub type CanonicalKey = Vec<Option<Vec<u8>>>;

/// A primary snapshot, as `pg_current_snapshot()` gives it: `xmin:xmax:xip,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: i64,
    pub xmax: i64,
    pub xip: HashSet<i64>,
}

impl Snapshot {
    /// Parses the text form of a `pg_snapshot`.
    pub fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => HashSet::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?,
        };
        Some(Snapshot { xmin, xmax, xip })
    }

    /// Whether the snapshot saw the transaction's effects; an unknown xid counts as unseen.
    pub fn sees(&self, xid: Option<i64>) -> bool {
        match xid {
            None => false,
            Some(x) if x < self.xmin => true,
            Some(x) => x < self.xmax && !self.xip.contains(&x),
        }
    }
}

/// One chunk of a backfill, handed to the applier.
pub struct Chunk {
    pub table: TableName,
    /// The journal's last intent id, sampled after the snapshot was taken.
    pub after: u64,
    pub snapshot: Snapshot,
    /// The settings the rows' text values were produced under.
    pub settings: Vec<(String, String)>,
    pub rows: Vec<(CanonicalKey, Row)>,
    /// Keys to delete from the target (a repair's rows the source no longer has), as key images.
    pub deletes: Vec<(CanonicalKey, Row)>,
    /// Run in the chunk's secondary transaction (the job's progress), with text parameters.
    pub progress: (String, Vec<String>),
    pub done: oneshot::Sender<ChunkOutcome>,
}

/// What became of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Committed with its progress; the rows written (the others were newer on the target).
    Applied {
        written: u64,
        skipped: u64,
    },
    /// An unseen transaction did something the chunk cannot be filtered by (a TRUNCATE, a
    /// replayed statement, a key it could not read): read the range again.
    Retry,
    Failed(String),
}

/// A change the applier applied to a watched table: its transaction's xid and its key (`None`:
/// every key may be affected).
#[derive(Debug, Clone)]
struct Written {
    xid: Option<i64>,
    key: Option<CanonicalKey>,
}

type Watched = Arc<Mutex<HashMap<TableName, Vec<Written>>>>;

/// The backfill's side of the applier: watch a table, hand over a chunk, read the figures.
#[derive(Clone)]
pub struct ChunkPort {
    tx: mpsc::UnboundedSender<Chunk>,
    notify: Arc<Notify>,
    watched: Watched,
    journal: Arc<Journal>,
    stats: Arc<MirrorStats>,
    applied: watch::Receiver<u64>,
}

impl ChunkPort {
    /// Starts (or restarts, forgetting what was noted) noting the keys applied to `table`.
    /// Call it before taking the chunk's snapshot.
    pub fn watch(&self, table: &TableName) {
        lock(&self.watched).insert(table.clone(), Vec::new());
    }

    pub fn unwatch(&self, table: &TableName) {
        lock(&self.watched).remove(table);
    }

    /// The last intent id the journal assigned.
    pub fn journal_last(&self) -> u64 {
        self.journal.last_id()
    }

    /// Waits until the applier has applied (or skipped) every intent up to `pos`; `false` when
    /// the applier stopped first.
    pub async fn wait_applied(&self, pos: u64) -> bool {
        let mut applied = self.applied.clone();
        let reached = applied.wait_for(|&id| id >= pos).await.is_ok();
        reached
    }

    /// The keys that changes applied to `table` since its watch began wrote, of transactions
    /// `snapshot` did not see; `None` when one of them may have written any key.
    pub fn unseen_written(
        &self,
        table: &TableName,
        snapshot: &Snapshot,
    ) -> Option<HashSet<CanonicalKey>> {
        unseen(&lock(&self.watched), table, snapshot)
    }

    /// Hands a chunk to the applier; `false` when the applier has stopped.
    pub fn submit(&self, chunk: Chunk) -> bool {
        let sent = self.tx.send(chunk).is_ok();
        self.notify.notify_one();
        sent
    }

    pub fn report(&self) -> MirrorReport {
        self.stats.report(&self.journal)
    }
}

/// The applier's side: chunks received, the one waiting for its ordering point, the watch.
pub(super) struct ChunkInbox {
    rx: mpsc::UnboundedReceiver<Chunk>,
    pub(super) notify: Arc<Notify>,
    waiting: Option<Chunk>,
    watched: Watched,
}

/// A new inbox and the port that feeds it.
pub(super) fn channel(
    journal: Arc<Journal>,
    stats: Arc<MirrorStats>,
    applied: watch::Receiver<u64>,
) -> (ChunkInbox, ChunkPort) {
    let (tx, rx) = mpsc::unbounded_channel();
    let notify = Arc::new(Notify::new());
    let watched: Watched = Arc::default();
    let inbox = ChunkInbox {
        rx,
        notify: notify.clone(),
        waiting: None,
        watched: watched.clone(),
    };
    let port = ChunkPort {
        tx,
        notify,
        watched,
        journal,
        stats,
        applied,
    };
    (inbox, port)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A column value's bytes as the server sent them (binary), whatever its type.
pub struct Raw(pub Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Raw, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The canonical key of columns `0..n` of a result row (binary results).
pub fn canonical(
    row: &tokio_postgres::Row,
    n: usize,
) -> Result<CanonicalKey, tokio_postgres::Error> {
    (0..n)
        .map(|i| row.try_get::<_, Option<Raw>>(i).map(|v| v.map(|r| r.0)))
        .collect()
}

impl Applier {
    /// The ordering point of the chunk waiting, taking one from the channel when none is.
    pub(super) fn chunk_point(&mut self) -> Option<u64> {
        if self.chunks.waiting.is_none() {
            self.chunks.waiting = self.chunks.rx.try_recv().ok();
        }
        self.chunks.waiting.as_ref().map(|c| c.after)
    }

    /// Applies the waiting chunk when the applied position reached its ordering point.
    pub(super) async fn chunk_if_due(&mut self, client: &Client) {
        let pos = *self.applied.borrow();
        if self.chunk_point().is_none_or(|p| p > pos) {
            return;
        }
        let Some(chunk) = self.chunks.waiting.take() else {
            return;
        };
        let outcome = match self.apply_chunk(client, &chunk).await {
            Ok(outcome) => outcome,
            Err(e) => {
                warn!(table = %chunk.table, error = %e, "backfill chunk failed");
                ChunkOutcome::Failed(e.to_string())
            }
        };
        let _ = chunk.done.send(outcome);
    }

    /// The chunk in one secondary transaction with its progress, minus the keys unseen
    /// transactions wrote.
    async fn apply_chunk(
        &mut self,
        client: &Client,
        chunk: &Chunk,
    ) -> Result<ChunkOutcome, ApplyError> {
        let Some(skip) = self.unseen_keys(chunk) else {
            return Ok(ChunkOutcome::Retry);
        };
        let Some((rule, plan)) = self.live_plan(&chunk.table)? else {
            return Ok(ChunkOutcome::Failed("no rule mirrors the table".into()));
        };
        let t = Target {
            table: &chunk.table,
            rule: &rule,
            plan: &plan,
        };
        self.pending.clear();
        self.pipeline.clear();
        self.checks.clear();
        self.carried = None;
        self.txn = 0;
        let result = self.chunk_in_txn(client, t, chunk, &skip).await;
        match result {
            Ok(written) => {
                self.settings = Some(chunk.settings.clone());
                let skipped = (chunk.rows.len() + chunk.deletes.len()) as u64 - written;
                Ok(ChunkOutcome::Applied { written, skipped })
            }
            Err(e) => {
                self.pipeline.clear();
                self.settings = None;
                let _ = client.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    }

    /// The keys that changes applied since the watch began, of transactions the chunk's snapshot
    /// did not see, wrote; `None` when one of them may have written any key.
    fn unseen_keys(&self, chunk: &Chunk) -> Option<HashSet<CanonicalKey>> {
        unseen(&lock(&self.chunks.watched), &chunk.table, &chunk.snapshot)
    }

    async fn chunk_in_txn(
        &mut self,
        client: &Client,
        t: Target<'_>,
        chunk: &Chunk,
        skip: &HashSet<CanonicalKey>,
    ) -> Result<u64, ApplyError> {
        self.control(client, "BEGIN", &[]).await?;
        self.queue_settings(client, &chunk.settings).await?;
        // Keys another instance applied a write to that the snapshot did not see.
        let images: Vec<&Row> = chunk
            .rows
            .iter()
            .chain(&chunk.deletes)
            .map(|(_, r)| r)
            .collect();
        let later = self
            .written_after(client, t.table, &images, &chunk.snapshot)
            .await?;
        let mut written = 0;
        for (n, (key, row)) in chunk.rows.iter().enumerate() {
            if skip.contains(key) || later.contains(&n) {
                continue;
            }
            // Read within the rule's `where`: inside it by construction.
            self.upsert(client, t, row, Some(true), None).await?;
            written += 1;
        }
        for (n, (key, row)) in chunk.deletes.iter().enumerate() {
            if skip.contains(key) || later.contains(&(chunk.rows.len() + n)) {
                continue;
            }
            self.delete(client, t, row, Some(true)).await?;
            written += 1;
        }
        let (sql, params) = &chunk.progress;
        let values: Vec<Value> = params
            .iter()
            .map(|p| Value::text(Type::TEXT.oid(), p))
            .collect();
        let refs: Vec<&Value> = values.iter().collect();
        self.control(client, sql, &refs).await?;
        self.control(client, "COMMIT", &[]).await?;
        self.flush(client).await?;
        Ok(written)
    }

    /// After a batch committed: notes the keys its transactions wrote to watched tables, in
    /// canonical form (read back through the secondary under the batch's own settings, which
    /// are in force on the connection now), one statement per table and batch.
    pub(super) async fn note_written(&mut self, client: &Client, txns: &Txns) {
        let tables: Vec<TableName> = lock(&self.chunks.watched).keys().cloned().collect();
        if tables.is_empty() {
            return;
        }
        let mut noted: Vec<(TableName, Written)> = Vec::new();
        for table in &tables {
            // Each key written: its transaction's xid and its row image (`None`: any key).
            let mut written: Vec<(Option<i64>, Option<&Row>)> = Vec::new();
            for t in txns.iter().filter_map(|(_, t)| t.as_ref()) {
                for change in t.changes.iter().filter(|c| &c.table == table) {
                    written.extend(change_keys(&change.op).into_iter().map(|r| (t.xid, r)));
                }
            }
            let rows: Vec<&Row> = written.iter().filter_map(|(_, r)| *r).collect();
            let mut keys = self.canonical_keys(client, table, &rows).await.into_iter();
            for (xid, row) in written {
                let key = row.and_then(|_| keys.next().flatten());
                noted.push((table.clone(), Written { xid, key }));
            }
        }
        let mut watched = lock(&self.chunks.watched);
        for (table, w) in noted {
            if let Some(list) = watched.get_mut(&table) {
                list.push(w);
            }
        }
    }

    /// The keys of `rows` in canonical form, in order: `SELECT * FROM (VALUES ($1::text::type,
    /// ..., 1), ...) ORDER BY` the ordinal, its answer in binary; the rows padded with NULL keys
    /// to a power of two, so that a few prepared statements serve every batch. `None` for a key
    /// that cannot be read (the chunk is then read again).
    async fn canonical_keys(
        &mut self,
        client: &Client,
        table: &TableName,
        rows: &[&Row],
    ) -> Vec<Option<CanonicalKey>> {
        let mut out = Vec::with_capacity(rows.len());
        for part in rows.chunks(KEYS_PER_STATEMENT) {
            let keys = self.canonical_part(client, table, part).await;
            out.extend(keys.unwrap_or_else(|| vec![None; part.len()]));
        }
        out
    }

    async fn canonical_part(
        &mut self,
        client: &Client,
        table: &TableName,
        rows: &[&Row],
    ) -> Option<Vec<Option<CanonicalKey>>> {
        let rules = self.rules.load_full();
        let rule = rules.get(table)?;
        let plain: Vec<(&Row, &[Value])> = rows.iter().map(|r| (*r, &[][..])).collect();
        let keys = KeyValues::build(rule, &plain, &[], 1)?;
        let n = rule.key.len();
        let sql = format!(
            "SELECT * FROM (VALUES {}) AS v ORDER BY {}",
            keys.tuples,
            n + 1
        );
        let stmt = self.prepare(client, &sql, &keys.values).await.ok()?;
        let answer = client
            .query(&stmt, &super::wire::params(&keys.values))
            .await
            .ok()?;
        let keys: Vec<Option<CanonicalKey>> = answer
            .iter()
            .take(rows.len())
            .map(|r| canonical(r, n).ok())
            .collect();
        (keys.len() == rows.len()).then_some(keys)
    }
}

/// The keys written to `table` since its watch began by transactions `snapshot` did not see;
/// `None` when one of them may have written any key.
fn unseen(
    watched: &HashMap<TableName, Vec<Written>>,
    table: &TableName,
    snapshot: &Snapshot,
) -> Option<HashSet<CanonicalKey>> {
    let written = watched.get(table).map(Vec::as_slice).unwrap_or_default();
    written
        .iter()
        .filter(|w| !snapshot.sees(w.xid))
        .map(|w| w.key.clone())
        .collect()
}

/// The keys a change writes: a row image or key per key written, `None` for a change that may
/// write any key (TRUNCATE, a replayed statement).
fn change_keys(op: &ChangeOp) -> Vec<Option<&Row>> {
    match op {
        ChangeOp::Upsert { row, .. } => vec![Some(row)],
        ChangeOp::Delete { key, .. } => vec![Some(key)],
        ChangeOp::UpdateKey { old_key, row, .. } => vec![Some(old_key), Some(row)],
        ChangeOp::Truncate | ChangeOp::Statement { .. } => vec![None],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_sees_what_committed_before_it() {
        let s = Snapshot::parse("100:105:101,103").unwrap();
        assert!(s.sees(Some(99)));
        assert!(s.sees(Some(100)));
        assert!(!s.sees(Some(101)));
        assert!(s.sees(Some(102)));
        assert!(!s.sees(Some(103)));
        assert!(s.sees(Some(104)));
        assert!(!s.sees(Some(105)));
        assert!(!s.sees(Some(2000)));
        assert!(!s.sees(None), "an unknown xid is taken as unseen");
        let empty = Snapshot::parse("7:7:").unwrap();
        assert!(empty.xip.is_empty());
        assert!(empty.sees(Some(6)) && !empty.sees(Some(7)));
        assert_eq!(Snapshot::parse("7:x:"), None);
        assert_eq!(Snapshot::parse("7"), None);
    }

    #[test]
    fn every_key_a_change_writes_is_noted() {
        let key = Row::new().with("id", Value::text(23, "1"));
        let row = Row::new().with("id", Value::text(23, "2"));
        let op = ChangeOp::UpdateKey {
            old_key: key.clone(),
            row: row.clone(),
            in_filter: None,
        };
        assert_eq!(change_keys(&op), vec![Some(&key), Some(&row)]);
        assert_eq!(change_keys(&ChangeOp::Truncate), vec![None]);
        let delete = ChangeOp::Delete {
            key: key.clone(),
            in_filter: Some(true),
        };
        assert_eq!(change_keys(&delete), vec![Some(&key)]);
    }
}
