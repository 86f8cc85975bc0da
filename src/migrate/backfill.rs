//! One backfill job's loop: read the next chunk of the source in key order in one REPEATABLE READ
//! snapshot on the primary, hand it to the applier with the journal's ordering point, wait for
//! it, and go on after its last key, throttled by rate and by the mirror's lag.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use super::image::{self, Query, Scope, Side};
use super::{store, JobError, Jobs, Running};
use crate::config::PgUrl;
use crate::mirror::apply::{canonical, CanonicalKey, Chunk, ChunkOutcome, Snapshot};
use crate::mirror::{Row, Value};
use crate::rules::{quote_ident, Rule};

/// The settings the chunks' text values are produced under on the primary, and parsed under on
/// the secondary.
const SETTINGS: [(&str, &str); 5] = [
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];
/// Failed chunks in a row before the job fails (a chunk the primary could not give, or the
/// applier could not apply).
const MAX_FAILURES: u32 = 5;
/// Chunks read again in a row before the job fails: each time an unseen TRUNCATE or replayed
/// statement came between the chunk's snapshot and its turn, which a workload truncating the
/// table that often would make endless.
const MAX_REREADS: u32 = 20;

/// How a job's loop ended without an error.
pub(super) enum Ended {
    Done,
    Cancelled,
}

/// One chunk as read: the snapshot, the rows with their canonical keys, and the last key's text.
pub(super) struct Read {
    pub snapshot: Snapshot,
    pub rows: Vec<(CanonicalKey, Row)>,
    pub last_key: Vec<Option<String>>,
}

/// What went wrong with the current chunk, in a row: failures and reads again.
#[derive(Debug, Default)]
pub(super) struct Attempts {
    failures: u32,
    rereads: u32,
}

impl Attempts {
    /// A chunk applied: the next one starts afresh.
    pub(super) fn applied(&mut self) {
        *self = Attempts::default();
    }

    /// One more failure: how long to wait before the next try, or the job's error once the
    /// failures are too many. The wait grows, so that a primary restarting has time to.
    fn failed(&mut self, error: String) -> Result<Duration, JobError> {
        self.failures += 1;
        if self.failures >= MAX_FAILURES {
            return Err(JobError::Chunk(error));
        }
        Ok(Duration::from_millis(500) * self.failures)
    }

    /// One more read again; the job's error once there were too many.
    pub(super) fn reread(&mut self) -> Result<(), JobError> {
        self.rereads += 1;
        if self.rereads >= MAX_REREADS {
            return Err(JobError::Chunk(format!(
                "read again {MAX_REREADS} times: a TRUNCATE or a replayed statement of the \
                 table came before it each time"
            )));
        }
        Ok(())
    }
}

/// Copies the rule's rows after `last_key` until none are left or the job is cancelled.
pub(super) async fn copy(
    jobs: &Arc<Jobs>,
    run: &Running,
    mut last_key: Option<Vec<Option<String>>>,
) -> Result<Ended, JobError> {
    let rule = jobs.backfillable(&run.table)?;
    let mut primary: Option<Client> = None;
    let mut attempts = Attempts::default();
    loop {
        if run.is_cancelled() {
            return Ok(Ended::Cancelled);
        }
        jobs.wait_for_lag(run).await;
        let scope = Scope {
            after: last_key.clone(),
            ..Scope::default()
        };
        let query = chunk_query(&rule, &scope, Some(run.chunk_rows))?;
        let read = match read_from(jobs, &mut primary, &rule, &query).await {
            Ok(read) => read,
            Err(e @ JobError::Primary(_)) => {
                // The connection is dropped (the primary restarting, say): a new one, later.
                primary = None;
                chunk_failed(&rule, e.to_string(), &mut attempts).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if read.rows.is_empty() {
            return Ok(Ended::Done);
        }
        let n = read.rows.len() as u64;
        let chunk = Handed {
            snapshot: read.snapshot,
            rows: read.rows,
            deletes: Vec::new(),
        };
        if apply(jobs, run, &rule, chunk, &read.last_key, &mut attempts).await? {
            last_key = Some(read.last_key);
            run.add(n);
            let table = rule.source.to_string();
            metrics::counter!("pgbridge_backfill_rows_total", "table" => table).increment(n);
        }
        run.throttle().await;
    }
}

/// Hands a chunk to the applier and settles what became of it: `true` when it was applied;
/// `false` when it is to be read again (an unseen TRUNCATE came first) or failed (after a
/// pause); an error once that happened too often in a row.
pub(super) async fn apply(
    jobs: &Jobs,
    run: &Running,
    rule: &Rule,
    chunk: Handed,
    last_key: &[Option<String>],
    attempts: &mut Attempts,
) -> Result<bool, JobError> {
    let outcome = hand_over(jobs, run, rule, chunk, last_key).await;
    // Noting keys costs the applier a secondary round trip each: only while a chunk waits.
    jobs.port.unwatch(&rule.source);
    match outcome? {
        ChunkOutcome::Applied { written, skipped } => {
            debug!(table = %rule.source, kind = %run.kind, written, skipped, "chunk applied");
            attempts.applied();
            Ok(true)
        }
        ChunkOutcome::Retry => {
            debug!(table = %rule.source, kind = %run.kind, "chunk read again");
            attempts.reread()?;
            Ok(false)
        }
        ChunkOutcome::Failed(e) => {
            chunk_failed(rule, e, attempts).await?;
            Ok(false)
        }
    }
}

/// The next chunk, read on the job's primary connection (made first when there is none).
async fn read_from(
    jobs: &Jobs,
    primary: &mut Option<Client>,
    rule: &Rule,
    query: &Query,
) -> Result<Read, JobError> {
    let client = match primary {
        Some(client) => client,
        None => primary.insert(connect_primary(jobs).await?),
    };
    // Before the snapshot: every transaction it cannot see is then noted when applied.
    jobs.port.watch(&rule.source);
    read_chunk(client, rule, query).await
}

/// A chunk that could not be read or applied: tried again after a pause, a few times.
pub(super) async fn chunk_failed(
    rule: &Rule,
    error: String,
    attempts: &mut Attempts,
) -> Result<(), JobError> {
    let failures = attempts.failures + 1;
    warn!(table = %rule.source, error = %error, failures, "backfill chunk failed");
    let pause = attempts.failed(error)?;
    tokio::time::sleep(pause).await;
    Ok(())
}

/// What a job hands the applier: rows read in one snapshot, and keys to delete.
pub(super) struct Handed {
    pub snapshot: Snapshot,
    pub rows: Vec<(CanonicalKey, Row)>,
    pub deletes: Vec<(CanonicalKey, Row)>,
}

/// Hands one chunk to the applier and waits for what became of it; the job's progress (its
/// last key, its rows) commits with it.
pub(super) async fn hand_over(
    jobs: &Jobs,
    run: &Running,
    rule: &Rule,
    handed: Handed,
    last_key: &[Option<String>],
) -> Result<ChunkOutcome, JobError> {
    let key_json = serde_json::to_string(last_key).map_err(|e| JobError::Corrupt(e.to_string()))?;
    let n = handed.rows.len() + handed.deletes.len();
    let progress = vec![run.id.to_string(), key_json, n.to_string()];
    let Handed {
        snapshot,
        rows,
        deletes,
    } = handed;
    let (done, outcome) = oneshot::channel();
    let chunk = Chunk {
        table: rule.source.clone(),
        // After the snapshot: every transaction it saw has its intent at or before this id.
        after: jobs.port.journal_last(),
        snapshot,
        settings: settings(),
        rows,
        deletes,
        progress: (store::PROGRESS_SQL.to_string(), progress),
        done,
    };
    if !jobs.port.submit(chunk) {
        return Err(JobError::ApplierStopped);
    }
    outcome.await.map_err(|_| JobError::ApplierStopped)
}

fn settings() -> Vec<(String, String)> {
    SETTINGS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// pgbridge's own connection to the primary, with the pinned settings.
pub(super) async fn connect_primary(jobs: &Jobs) -> Result<Client, JobError> {
    connect_pinned(&jobs.primary)
        .await
        .map_err(JobError::Primary)
}

/// A connection under the settings every job reads and writes values in, so that a value's
/// text is the same on both sides.
pub(super) async fn connect_pinned(url: &PgUrl) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = url.connect().await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "job connection ended");
        }
    });
    let set: Vec<String> = SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {k} = '{v}'"))
        .collect();
    client.batch_execute(&set.join("; ")).await?;
    Ok(client)
}

/// The rows of the rule within its `where`, after the last key, in one snapshot.
pub(super) async fn read_chunk(
    client: &Client,
    rule: &Rule,
    query: &Query,
) -> Result<Read, JobError> {
    let snapshot = begin_snapshot(client).await?;
    let result = read_in_txn(client, rule, query, snapshot).await;
    let _ = client.batch_execute("COMMIT").await;
    result
}

/// Begins a REPEATABLE READ READ ONLY transaction on the primary and takes its snapshot (its
/// first statement): what the job reads next is read in it. The caller commits.
pub(super) async fn begin_snapshot(client: &Client) -> Result<Snapshot, JobError> {
    let begin = async {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let row = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?;
        Ok::<String, tokio_postgres::Error>(row.get(0))
    };
    match begin.await {
        Ok(snap) => Snapshot::parse(&snap).ok_or(JobError::Corrupt(snap)),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(JobError::Primary(e))
        }
    }
}

async fn read_in_txn(
    client: &Client,
    rule: &Rule,
    query: &Query,
    snapshot: Snapshot,
) -> Result<Read, JobError> {
    let rows = client
        .query(&query.sql, &image::params(query))
        .await
        .map_err(JobError::Primary)?;
    let out = rows
        .iter()
        .map(|r| chunk_row(rule, r))
        .collect::<Result<Vec<_>, _>>()?;
    let last_key = out
        .last()
        .map(|(_, row)| key_text(rule, row))
        .unwrap_or_default();
    info!(table = %rule.source, rows = out.len(), "backfill chunk read");
    Ok(Read {
        snapshot,
        rows: out,
        last_key,
    })
}

/// A result row as the keys' canonical form and the row image (every column as text).
fn chunk_row(rule: &Rule, r: &tokio_postgres::Row) -> Result<(CanonicalKey, Row), JobError> {
    let k = rule.key.len();
    let key = canonical(r, k).map_err(JobError::Primary)?;
    let cols = rule.source_columns.as_deref().unwrap_or_default();
    let mut row = Row::with_capacity(cols.len());
    for (i, c) in cols.iter().enumerate() {
        let v: Option<String> = r.try_get(k + i).map_err(JobError::Primary)?;
        let value = match &v {
            Some(s) => Value::text(25, s),
            None => Value::null(25),
        };
        row = row.with(&c.name, value);
    }
    Ok((key, row))
}

/// The key columns' text values of a row image, in rule key order (the job's last key).
pub(super) fn key_text(rule: &Rule, row: &Row) -> Vec<Option<String>> {
    rule.key
        .iter()
        .map(|name| row.get(name).and_then(|v| v.bytes.as_ref()))
        .map(|b| b.map(|b| String::from_utf8_lossy(b).into_owned()))
        .collect()
}

/// `SELECT key..., col::text... FROM source WHERE (where) AND (scope) ORDER BY key LIMIT n`:
/// the keys in binary (their canonical form), every column as text.
pub(super) fn chunk_query(
    rule: &Rule,
    scope: &Scope,
    limit: Option<i64>,
) -> Result<Query, JobError> {
    let cols = rule
        .source_columns
        .as_ref()
        .ok_or_else(|| JobError::Unchecked(rule.source.to_string()))?;
    let keys: Vec<String> = rule.key.iter().map(|k| quote_ident(k)).collect();
    // Named apart from the keys, which ORDER BY names.
    let texts: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}::text AS pgbridge_{i}", quote_ident(&c.name)))
        .collect();
    let cond = image::condition(rule, Side::Primary, scope)?;
    let mut sql = format!(
        "SELECT {}, {} FROM {}",
        keys.join(", "),
        texts.join(", "),
        rule.source.quoted(),
    );
    if !cond.sql.is_empty() {
        sql.push_str(&format!(" WHERE {}", cond.sql));
    }
    sql.push_str(&format!(" ORDER BY {}", keys.join(", ")));
    if let Some(n) = limit {
        sql.push_str(&format!(" LIMIT {n}"));
    }
    Ok(Query {
        sql,
        params: cond.params,
    })
}

/// How many rows the rule owns on the source now (the job's total).
pub(super) async fn count(jobs: &Jobs, rule: &Rule) -> Result<i64, JobError> {
    let client = connect_primary(jobs).await?;
    let condition = rule
        .filter
        .as_ref()
        .map(|f| format!(" WHERE ({f})"))
        .unwrap_or_default();
    let sql = format!("SELECT count(*) FROM {}{condition}", rule.source.quoted());
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(JobError::Primary)?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::view::tests::dxy_rule;

    #[test]
    fn a_job_gives_up_after_a_few_failures_or_many_reads_again_in_a_row() {
        let mut a = Attempts::default();
        let pauses: Vec<_> = (1..MAX_FAILURES).map(|_| a.failed("x".into())).collect();
        assert!(pauses.iter().all(Result::is_ok), "{pauses:?}");
        assert!(
            pauses[1].as_ref().unwrap() > pauses[0].as_ref().unwrap(),
            "{pauses:?}"
        );
        let err = a
            .failed("the primary: connection closed".into())
            .unwrap_err();
        assert!(err.to_string().contains("connection closed"), "{err}");
        a.applied();
        assert!(
            a.failed("x".into()).is_ok(),
            "an applied chunk starts afresh"
        );
        for _ in 1..MAX_REREADS {
            a.reread().unwrap();
        }
        let err = a.reread().unwrap_err();
        assert!(err.to_string().contains("TRUNCATE"), "{err}");
    }

    #[test]
    fn a_chunk_is_read_in_key_order_after_the_last_key() {
        let rule = dxy_rule();
        let first = chunk_query(&rule, &Scope::default(), Some(100)).unwrap();
        assert_eq!(
            first.sql,
            "SELECT symbol, ts, symbol::text AS pgbridge_0, ts::text AS pgbridge_1, \
             open::text AS pgbridge_2, high::text AS pgbridge_3, low::text AS pgbridge_4, \
             close::text AS pgbridge_5, volume::text AS pgbridge_6 FROM public.derived_data_bars \
             WHERE (symbol = 'DXY') ORDER BY symbol, ts LIMIT 100"
        );
        let after = Scope {
            after: Some(vec![Some("DXY".into()), Some("2026-01-01".into())]),
            ..Scope::default()
        };
        let next = chunk_query(&rule, &after, Some(5)).unwrap().sql;
        assert!(
            next.contains(
                "WHERE (symbol = 'DXY') AND (symbol, ts) > ($1::text::text, \
                 $2::text::timestamp with time zone) ORDER BY"
            ),
            "{next}"
        );
    }
}
