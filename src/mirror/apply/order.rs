//! One row written through several instances (`[mirror] order_rows`): each instance applies
//! its own sessions' transactions, so two transactions that wrote one row through two instances
//! may reach the target in either order. Each captured transaction carries the largest WAL
//! position its rows were written at on the primary (`pg_current_wal_insert_lsn()` in the
//! RETURNING, src/sql/capture.rs): a transaction that writes a row another one wrote waits for
//! that one's commit, so its position is the larger. Before a batch's changes, in its secondary
//! transaction, the applier records for each key it writes the batch's largest position (and
//! that transaction's xid) in `pgbridge.row_versions`, unless a larger one is there: then an
//! instance already applied a newer image of that row, and this batch's changes of it are left
//! out (a row image is the whole row: the newer one is what the row is).
//!
//! A backfill chunk read in a snapshot leaves out the keys whose recorded writer that snapshot
//! did not see: that writer committed after it, so its image is newer than the chunk's (the
//! chunk's own instance's writers are left out by src/mirror/apply/chunk.rs already).

use std::collections::{BTreeMap, HashSet};

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::chunk::Snapshot;
use super::plan::KeyValues;
use super::task::Txns;
use super::wire::{classify, params};
use super::{Applier, ApplyError};
use crate::mirror::{ChangeOp, Row, Value};
use crate::rules::TableName;

pub(super) const SCHEMA_SQL: &str = "CREATE TABLE IF NOT EXISTS pgbridge.row_versions (\
    tbl text NOT NULL, key bytea NOT NULL, lsn bigint NOT NULL, xid bigint, \
    PRIMARY KEY (tbl, key))";

/// Keys one statement asks about.
const KEYS_PER_STATEMENT: usize = 256;

/// Which key of a change: the row it writes, or an UPDATE's old key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Side {
    Row,
    OldKey,
}

/// The keys of a batch's changes to leave out: (transaction index, change index, side).
pub(super) type Skips = HashSet<(usize, usize, Side)>;

/// A key a batch writes: where, its row (or key image), its transaction's position and xid.
struct Keyed<'a> {
    at: (usize, usize, Side),
    row: &'a Row,
    lsn: i64,
    xid: Option<i64>,
}

impl Applier {
    /// Records the batch's keys' positions, and the changes to leave out because an instance
    /// applied a newer image of their row. Nothing without `[mirror] order_rows`.
    pub(super) async fn newer_elsewhere(
        &mut self,
        client: &Client,
        txns: &Txns,
    ) -> Result<Skips, ApplyError> {
        let mut skips = Skips::new();
        if !self.cfg.order_rows {
            return Ok(skips);
        }
        let mut by_table: BTreeMap<String, (TableName, Vec<Keyed<'_>>)> = BTreeMap::new();
        for (i, (_, txn)) in txns.iter().enumerate() {
            let Some((txn, lsn)) = txn.as_ref().and_then(|t| Some((t, t.lsn? as i64))) else {
                continue;
            };
            for (k, change) in txn.changes.iter().enumerate() {
                let entry = by_table
                    .entry(change.table.to_string())
                    .or_insert_with(|| (change.table.clone(), Vec::new()));
                let mut key = |side, row| {
                    entry.1.push(Keyed {
                        at: (i, k, side),
                        row,
                        lsn,
                        xid: txn.xid,
                    })
                };
                match &change.op {
                    ChangeOp::Upsert { row, .. } => key(Side::Row, row),
                    ChangeOp::Delete { key: row, .. } => key(Side::Row, row),
                    ChangeOp::UpdateKey { old_key, row, .. } => {
                        key(Side::OldKey, old_key);
                        key(Side::Row, row);
                    }
                    ChangeOp::Truncate | ChangeOp::Statement { .. } => {}
                }
            }
        }
        if by_table.values().all(|(_, keyed)| keyed.is_empty()) {
            return Ok(skips);
        }
        // BEGIN and the settings first: the keys' text values are read under them.
        self.flush(client).await?;
        for (table, keyed) in by_table.values() {
            for part in keyed.chunks(KEYS_PER_STATEMENT) {
                let stale = self.record_versions(client, table, part).await?;
                skips.extend(stale.into_iter().map(|i| part[i].at));
            }
        }
        Ok(skips)
    }

    /// Records `part`'s positions; the indexes in `part` of the keys with a newer one.
    async fn record_versions(
        &mut self,
        client: &Client,
        table: &TableName,
        part: &[Keyed<'_>],
    ) -> Result<Vec<usize>, ApplyError> {
        let rules = self.rules.load_full();
        let Some(rule) = rules.get(table) else {
            return Ok(Vec::new());
        };
        let extra: Vec<[Value; 2]> = part
            .iter()
            .map(|k| {
                let xid = k.xid.map_or_else(
                    || Value::null(Type::INT8.oid()),
                    |x| Value::text(Type::INT8.oid(), &x.to_string()),
                );
                [Value::text(Type::INT8.oid(), &k.lsn.to_string()), xid]
            })
            .collect();
        let rows: Vec<(&Row, &[Value])> = part
            .iter()
            .zip(&extra)
            .map(|(k, e)| (k.row, &e[..]))
            .collect();
        let Some(keys) = KeyValues::build(rule, &rows, &["int8", "int8"], 2) else {
            return Ok(Vec::new());
        };
        let table_name = Value::text(Type::TEXT.oid(), &table.to_string());
        let c = &keys.columns;
        let sql = format!(
            "WITH v ({c}, l, x, i) AS (VALUES {}), \
             k AS (SELECT record_send(ROW({c})) AS key, max(l) AS lsn, \
                   (array_agg(x ORDER BY l DESC))[1] AS xid FROM v WHERE l IS NOT NULL GROUP BY 1), \
             up AS (INSERT INTO pgbridge.row_versions AS r (tbl, key, lsn, xid) \
                    SELECT $1, key, lsn, xid FROM k ON CONFLICT (tbl, key) DO UPDATE \
                    SET lsn = excluded.lsn, xid = excluded.xid WHERE r.lsn <= excluded.lsn \
                    RETURNING key) \
             SELECT v.i FROM v WHERE v.l IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM up WHERE up.key = record_send(ROW({c})))",
            keys.tuples
        );
        let mut values: Vec<&Value> = vec![&table_name];
        values.extend(keys.values.iter().copied());
        self.indexes(client, &sql, &values, table).await
    }

    /// The indexes in `rows` of a chunk's keys whose recorded writer `snapshot` did not see.
    pub(super) async fn written_after(
        &mut self,
        client: &Client,
        table: &TableName,
        rows: &[&Row],
        snapshot: &Snapshot,
    ) -> Result<HashSet<usize>, ApplyError> {
        let mut out = HashSet::new();
        if !self.cfg.order_rows || rows.is_empty() {
            return Ok(out);
        }
        let rules = self.rules.load_full();
        let Some(rule) = rules.get(table) else {
            return Ok(out);
        };
        self.flush(client).await?;
        for (n, part) in rows.chunks(KEYS_PER_STATEMENT).enumerate() {
            let plain: Vec<(&Row, &[Value])> = part.iter().map(|r| (*r, &[][..])).collect();
            let Some(keys) = KeyValues::build(rule, &plain, &[], 2) else {
                return Ok(out);
            };
            let table_name = Value::text(Type::TEXT.oid(), &table.to_string());
            let c = &keys.columns;
            let sql = format!(
                "WITH v ({c}, i) AS (VALUES {}) SELECT v.i, r.xid FROM v \
                 JOIN pgbridge.row_versions r ON r.tbl = $1 AND r.key = record_send(ROW({c}))",
                keys.tuples
            );
            let mut values: Vec<&Value> = vec![&table_name];
            values.extend(keys.values.iter().copied());
            for r in self.query(client, &sql, &values, table).await? {
                let (i, xid): (i32, Option<i64>) = (r.get(0), r.get(1));
                if !snapshot.sees(xid) {
                    out.insert(n * KEYS_PER_STATEMENT + i as usize);
                }
            }
        }
        Ok(out)
    }

    /// Runs `sql`, whose answer is one column of indexes.
    async fn indexes(
        &mut self,
        client: &Client,
        sql: &str,
        values: &[&Value],
        table: &TableName,
    ) -> Result<Vec<usize>, ApplyError> {
        let rows = self.query(client, sql, values, table).await?;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0) as usize).collect())
    }

    /// Runs `sql` (prepared once per connection) in the batch's transaction; its rows.
    async fn query(
        &mut self,
        client: &Client,
        sql: &str,
        values: &[&Value],
        table: &TableName,
    ) -> Result<Vec<tokio_postgres::Row>, ApplyError> {
        let txn = self.txn;
        let failed = |e: tokio_postgres::Error| classify(&e, txn, Some(table), None);
        let stmt = self.prepare(client, sql, values).await.map_err(failed)?;
        client.query(&stmt, &params(values)).await.map_err(failed)
    }
}
