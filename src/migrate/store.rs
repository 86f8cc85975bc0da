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
    finished_at timestamptz, error text)";

/// A chunk's progress, in the chunk's transaction: `$1` id, `$2` last key (JSON), `$3` rows.
pub const PROGRESS_SQL: &str = "UPDATE pgbridge.jobs SET last_key = $2::text::jsonb, \
    rows_done = rows_done + $3::text::bigint, updated_at = now() WHERE id = $1::text::bigint";

const COLUMNS: &str = "id, kind, \"table\", state, last_key::text, rows_done, rows_total, \
    chunk_rows, max_rows_per_sec, started_at::text, updated_at::text, finished_at::text, error";

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
}

/// A connection to the secondary with the jobs table in place.
pub async fn connect(secondary: &PgUrl) -> Result<Client, JobError> {
    let (client, conn) = secondary.connect().await.map_err(JobError::Secondary)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "jobs connection ended");
        }
    });
    // The applier creates the schema too: a concurrent CREATE ... IF NOT EXISTS may fail on
    // the catalog's unique index, and then the second try finds it.
    if client.batch_execute(SCHEMA_SQL).await.is_err() {
        client
            .batch_execute(SCHEMA_SQL)
            .await
            .map_err(JobError::Secondary)?;
    }
    Ok(client)
}

/// A new running job; its id.
pub async fn create(
    client: &Client,
    kind: &str,
    table: &str,
    chunk_rows: i64,
    max_rows_per_sec: i64,
) -> Result<i64, JobError> {
    let row = client
        .query_one(
            "INSERT INTO pgbridge.jobs (kind, \"table\", state, chunk_rows, max_rows_per_sec) \
             VALUES ($1, $2, 'running', $3, $4) RETURNING id",
            &[&kind, &table, &chunk_rows, &max_rows_per_sec],
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
    })
}
