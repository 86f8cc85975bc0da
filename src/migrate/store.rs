//! Job state on the secondary: the `pgbridge.jobs` table beside `pgbridge.applied`, so that a
//! job's progress survives a restart of pgbridge. A chunk's progress is written by the applier
//! in the chunk's own transaction ([`PROGRESS_SQL`]); the rest of a job's life is written here.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tracing::debug;

use super::JobError;
use crate::config::PgUrl;

const SCHEMA_SQL: &str = "CREATE SCHEMA IF NOT EXISTS pgbridge; \
    CREATE TABLE IF NOT EXISTS pgbridge.jobs (id bigserial PRIMARY KEY, kind text NOT NULL, \
    \"table\" text NOT NULL, state text NOT NULL, last_key jsonb, rows_done bigint NOT NULL DEFAULT 0, \
    rows_total bigint, chunk_rows bigint NOT NULL, max_rows_per_sec bigint NOT NULL DEFAULT 0, \
    started_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), \
    finished_at timestamptz, error text); \
    ALTER TABLE pgbridge.jobs ADD COLUMN IF NOT EXISTS params jsonb, \
    ADD COLUMN IF NOT EXISTS result jsonb, ADD COLUMN IF NOT EXISTS checkpoint jsonb, \
    ADD COLUMN IF NOT EXISTS owner text, ADD COLUMN IF NOT EXISTS owner_seen timestamptz; \
    CREATE TABLE IF NOT EXISTS pgbridge.job_keys (job bigint NOT NULL, \"table\" text NOT NULL, \
    key jsonb NOT NULL, what text NOT NULL, columns text[], PRIMARY KEY (job, \"table\", key))";

/// How long a running job's owner may go without renewing its lease before another instance
/// takes the job over.
pub const LEASE_SECS: f64 = 10.0;

/// Takes job `$1` for instance `$2` when it runs and no live instance holds it.
const CLAIM_SQL: &str = "UPDATE pgbridge.jobs SET owner = $2, owner_seen = now() \
    WHERE id = $1 AND state = 'running' AND (owner IS NULL OR owner = $2 \
    OR owner_seen < now() - make_interval(secs => $3)) RETURNING owner";

/// Whether instance `owner` holds running job `id` now (taking it when free or abandoned).
pub async fn claim(client: &Client, id: i64, owner: &str) -> Result<bool, JobError> {
    let row = client
        .query_opt(CLAIM_SQL, &[&id, &owner, &LEASE_SECS])
        .await
        .map_err(JobError::Secondary)?;
    Ok(row.is_some())
}

/// Renews the lease of every running job instance `owner` holds.
pub async fn renew(client: &Client, owner: &str) -> Result<u64, JobError> {
    client
        .execute(
            "UPDATE pgbridge.jobs SET owner_seen = now() WHERE owner = $1 AND state = 'running'",
            &[&owner],
        )
        .await
        .map_err(JobError::Secondary)
}

/// A chunk's progress, in the chunk's transaction: `$1` id, `$2` last key (JSON), `$3` rows.
pub const PROGRESS_SQL: &str = "UPDATE pgbridge.jobs SET last_key = $2::text::jsonb, \
    rows_done = rows_done + $3::text::bigint, updated_at = now() WHERE id = $1::text::bigint";

const COLUMNS: &str = "id, kind, \"table\", state, last_key::text, rows_done, rows_total, \
    chunk_rows, max_rows_per_sec, started_at::text, updated_at::text, finished_at::text, error, params::text, result::text, \
    owner, coalesce(owner_seen < now() - interval '10 seconds', true)";

/// One row of `pgbridge.jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub table: String,
    /// running, done, failed or cancelled.
    pub state: String,
    /// The key columns' text values of the last row done, in rule key order.
    pub last_key: Option<Vec<Option<String>>>,
    pub rows_done: i64,
    pub rows_total: Option<i64>,
    pub chunk_rows: i64,
    pub max_rows_per_sec: i64,
    pub started_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// What the job was asked (a verify: its tables; a repair: its verify).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    /// What it found or did (a verify: per table, matched, missing, extra, differing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The instance that runs it, or ran it last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Its owner has not renewed the lease for [`LEASE_SECS`] (or it has none).
    #[serde(skip)]
    pub lease_lapsed: bool,
}

/// A connection to the secondary with the jobs tables in place.
pub async fn connect(secondary: &PgUrl) -> Result<Client, JobError> {
    let (client, conn) = secondary.connect().await.map_err(JobError::Secondary)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "jobs connection ended");
        }
    });
    let url = secondary.redacted();
    if lock(&READY).contains(&url) {
        return Ok(client);
    }
    // The applier creates the schema too, and so may a job and an API call at once: a
    // concurrent CREATE ... IF NOT EXISTS may fail on the catalog's unique index; the advisory
    // lock orders pgbridge's own, and a second try finds what the applier made.
    let create = crate::mirror::under_schema_lock(SCHEMA_SQL);
    if client.batch_execute(&create).await.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
        client
            .batch_execute(&create)
            .await
            .map_err(JobError::Secondary)?;
    }
    lock(&READY).push(url);
    Ok(client)
}

/// The secondaries whose jobs tables this process made sure of.
static READY: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a new job is.
pub struct NewJob<'a> {
    pub kind: &'a str,
    pub table: &'a str,
    pub chunk_rows: i64,
    pub max_rows_per_sec: i64,
    pub params: Option<serde_json::Value>,
}

/// A new running job; its id.
pub async fn create(client: &Client, job: &NewJob<'_>) -> Result<i64, JobError> {
    let params = job.params.as_ref().map(|p| p.to_string());
    let row = client
        .query_one(
            "INSERT INTO pgbridge.jobs (kind, \"table\", state, chunk_rows, max_rows_per_sec, \
             params) VALUES ($1, $2, 'running', $3, $4, $5::text::jsonb) RETURNING id",
            &[
                &job.kind,
                &job.table,
                &job.chunk_rows,
                &job.max_rows_per_sec,
                &params,
            ],
        )
        .await
        .map_err(JobError::Secondary)?;
    Ok(row.get(0))
}

pub async fn set_total(client: &Client, id: i64, total: i64) -> Result<(), JobError> {
    client
        .execute(
            "UPDATE pgbridge.jobs SET rows_total = $2 WHERE id = $1",
            &[&id, &total],
        )
        .await
        .map_err(JobError::Secondary)?;
    Ok(())
}

/// Ends a job in `state` (done, failed, cancelled), with the error if any.
pub async fn finish(
    client: &Client,
    id: i64,
    state: &str,
    error: Option<&str>,
) -> Result<(), JobError> {
    client
        .execute(
            "UPDATE pgbridge.jobs SET state = $2, error = $3, updated_at = now(), \
             finished_at = now() WHERE id = $1",
            &[&id, &state, &error],
        )
        .await
        .map_err(JobError::Secondary)?;
    Ok(())
}

/// Marks a cancelled job running again (a new start resumes it where it ended).
pub async fn reopen(client: &Client, id: i64) -> Result<(), JobError> {
    client
        .execute(
            "UPDATE pgbridge.jobs SET state = 'running', error = NULL, finished_at = NULL, \
             updated_at = now() WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(JobError::Secondary)?;
    Ok(())
}

/// Every job, newest first; or the ones in `state`.
pub async fn list(client: &Client, state: Option<&str>) -> Result<Vec<JobRow>, JobError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM pgbridge.jobs WHERE $1::text IS NULL OR state = $1 ORDER BY id DESC"
    );
    let rows = client
        .query(&sql, &[&state])
        .await
        .map_err(JobError::Secondary)?;
    rows.iter().map(job_row).collect()
}

pub async fn get(client: &Client, id: i64) -> Result<Option<JobRow>, JobError> {
    let sql = format!("SELECT {COLUMNS} FROM pgbridge.jobs WHERE id = $1");
    let row = client
        .query_opt(&sql, &[&id])
        .await
        .map_err(JobError::Secondary)?;
    row.as_ref().map(job_row).transpose()
}

fn job_row(r: &tokio_postgres::Row) -> Result<JobRow, JobError> {
    let last_key: Option<String> = r.get(4);
    let last_key = last_key
        .map(|k| serde_json::from_str(&k))
        .transpose()
        .map_err(|e| JobError::Corrupt(e.to_string()))?;
    Ok(JobRow {
        id: r.get(0),
        kind: r.get(1),
        table: r.get(2),
        state: r.get(3),
        last_key,
        rows_done: r.get(5),
        rows_total: r.get(6),
        chunk_rows: r.get(7),
        max_rows_per_sec: r.get(8),
        started_at: r.get(9),
        updated_at: r.get(10),
        finished_at: r.get(11),
        error: r.get(12),
        params: json_column(r, 13)?,
        result: json_column(r, 14)?,
        owner: r.get(15),
        lease_lapsed: r.get(16),
    })
}

fn json_column(r: &tokio_postgres::Row, i: usize) -> Result<Option<serde_json::Value>, JobError> {
    let text: Option<String> = r.get(i);
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| JobError::Corrupt(e.to_string()))
}

/// Sets what a job found (and forgets its checkpoint).
pub async fn set_result(
    client: &Client,
    id: i64,
    result: &serde_json::Value,
) -> Result<(), JobError> {
    client
        .execute(
            "UPDATE pgbridge.jobs SET result = $2::text::jsonb, checkpoint = NULL, \
             updated_at = now() WHERE id = $1",
            &[&id, &result.to_string()],
        )
        .await
        .map_err(JobError::Secondary)?;
    Ok(())
}

/// Where a long job stands, so that it resumes there after a restart.
pub async fn set_checkpoint(
    client: &Client,
    id: i64,
    rows_done: i64,
    checkpoint: &serde_json::Value,
) -> Result<(), JobError> {
    client
        .execute(
            "UPDATE pgbridge.jobs SET checkpoint = $3::text::jsonb, rows_done = $2, \
             updated_at = now() WHERE id = $1",
            &[&id, &rows_done, &checkpoint.to_string()],
        )
        .await
        .map_err(JobError::Secondary)?;
    Ok(())
}

pub async fn checkpoint(client: &Client, id: i64) -> Result<Option<serde_json::Value>, JobError> {
    let row = client
        .query_one(
            "SELECT checkpoint::text FROM pgbridge.jobs WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(JobError::Secondary)?;
    let text: Option<String> = row.get(0);
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| JobError::Corrupt(e.to_string()))
}

/// A key a verify found different: `what` is missing, extra or differing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobKey {
    pub table: String,
    pub key: Vec<Option<String>>,
    pub what: String,
    pub columns: Vec<String>,
}

/// Records the keys a job found (a key found again keeps its last finding).
pub async fn add_keys(client: &Client, job: i64, keys: &[JobKey]) -> Result<(), JobError> {
    if keys.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(keys).map_err(|e| JobError::Corrupt(e.to_string()))?;
    client
        .execute(
            "INSERT INTO pgbridge.job_keys (job, \"table\", key, what, columns) \
             SELECT $1, k->>'table', k->'key', k->>'what', \
             ARRAY(SELECT jsonb_array_elements_text(k->'columns')) \
             FROM jsonb_array_elements($2::text::jsonb) AS k \
             ON CONFLICT (job, \"table\", key) DO UPDATE SET what = EXCLUDED.what, \
             columns = EXCLUDED.columns",
            &[&job, &json],
        )
        .await
        .map_err(JobError::Secondary)?;
    Ok(())
}

/// The keys a job found for `table`, in no particular order.
pub async fn keys(client: &Client, job: i64, table: &str) -> Result<Vec<JobKey>, JobError> {
    let rows = client
        .query(
            "SELECT key::text, what, columns FROM pgbridge.job_keys \
             WHERE job = $1 AND \"table\" = $2",
            &[&job, &table],
        )
        .await
        .map_err(JobError::Secondary)?;
    rows.iter()
        .map(|r| {
            let key: String = r.get(0);
            Ok(JobKey {
                table: table.to_string(),
                key: serde_json::from_str(&key).map_err(|e| JobError::Corrupt(e.to_string()))?,
                what: r.get(1),
                columns: r.get::<_, Option<Vec<String>>>(2).unwrap_or_default(),
            })
        })
        .collect()
}
