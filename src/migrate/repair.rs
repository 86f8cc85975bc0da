//! The repair job: the target made equal to the source where a verify found them different,
//! through the backfill's ordered path (src/migrate/mod.rs argues why a chunk there never
//! overtakes a mirrored change). The keys a verify found are read on the primary in one
//! snapshot: the rows it has are written, the keys it lacks are deleted from the target; then
//! those keys are compared again, and the result says what is still different.

use std::sync::Arc;

use serde_json::json;
use tokio_postgres::Client;
use tracing::info;

use super::backfill::{self, Ended, Handed};
use super::image::{KeyText, Query, Scope};
use super::verify::{Ctx, TableResult};
use super::{store, JobError, Jobs, Running};
use crate::mirror::apply::{canonical, CanonicalKey};
use crate::mirror::{Row, Value};
use crate::rules::Rule;

/// Keys per chunk (each key is a few query parameters).
const KEYS_PER_CHUNK: usize = 1000;

/// The verify a repair of `table` starts from: `given` when it verified the table and ended,
/// else the table's last verify that ended.
pub(super) async fn find_verify(
    client: &Client,
    table: &str,
    given: Option<i64>,
) -> Result<i64, JobError> {
    let covers = |j: &store::JobRow| {
        j.kind == "verify" && j.state == "done" && j.table.split(',').any(|t| t == table)
    };
    match given {
        Some(id) => {
            let job = store::get(client, id).await?.ok_or(JobError::NoJob(id))?;
            match covers(&job) {
                true => Ok(id),
                false => Err(JobError::NoVerify(
                    table.to_string(),
                    format!(
                        ": job {id} is a {} of {} ({})",
                        job.kind, job.table, job.state
                    ),
                )),
            }
        }
        None => store::list(client, None)
            .await?
            .iter()
            .find(|j| covers(j))
            .map(|j| j.id)
            .ok_or_else(|| JobError::NoVerify(table.to_string(), String::new())),
    }
}

/// Repairs the keys verify job `verify` found in the job's table, then checks them again.
pub(super) async fn run(jobs: &Arc<Jobs>, run: &Running, verify: i64) -> Result<Ended, JobError> {
    let rule = jobs.verifiable(&run.table)?;
    let client = store::connect(&jobs.secondary).await?;
    let mut keys: Vec<KeyText> = store::keys(&client, verify, &run.table)
        .await?
        .into_iter()
        .map(|k| k.key)
        .collect();
    keys.sort();
    // A resumed repair starts over: writing a source row again is harmless.
    run.done.store(0, std::sync::atomic::Ordering::Relaxed);
    let primary = backfill::connect_primary(jobs).await?;
    let mut written = 0;
    for batch in keys.chunks(KEYS_PER_CHUNK) {
        match repair_keys(jobs, run, &rule, &primary, batch).await? {
            Some(n) => written += n,
            None => return Ok(Ended::Cancelled),
        }
    }
    let Some(after) = recheck(jobs, run, rule.clone(), &keys).await? else {
        return Ok(Ended::Cancelled);
    };
    info!(table = %rule.source, keys = keys.len(), written, still = after.differences(),
          "repair done");
    let result = json!({
        "verify": verify,
        "keys": keys.len(),
        "written": written,
        "clean": after.differences() == 0,
        "after": after,
    });
    store::set_result(&client, run.id, &result).await?;
    Ok(Ended::Done)
}

/// One chunk of keys through the applier: the rows written and keys deleted, or `None` when
/// the job was cancelled.
async fn repair_keys(
    jobs: &Jobs,
    run: &Running,
    rule: &Rule,
    primary: &Client,
    keys: &[KeyText],
) -> Result<Option<u64>, JobError> {
    let mut attempts = backfill::Attempts::default();
    loop {
        if run.is_cancelled() {
            return Ok(None);
        }
        jobs.wait_for_lag(run).await;
        jobs.port.watch(&rule.source);
        let scope = Scope {
            keys: Some(keys.to_vec()),
            ..Scope::default()
        };
        let query = backfill::chunk_query(rule, &scope, None)?;
        let read = backfill::read_chunk(primary, rule, &query).await?;
        let deletes = absent(primary, rule, keys, &read.rows).await?;
        let last = keys.last().cloned().unwrap_or_default();
        let handed = Handed {
            snapshot: read.snapshot,
            rows: read.rows,
            deletes,
        };
        let written = (handed.rows.len() + handed.deletes.len()) as u64;
        if backfill::apply(jobs, run, rule, handed, &last, &mut attempts).await? {
            run.add(keys.len() as u64);
            return Ok(Some(written));
        }
    }
}

/// The keys the source does not hold (within the rule's `where`), as key images to delete, with
/// their canonical form.
async fn absent(
    primary: &Client,
    rule: &Rule,
    keys: &[KeyText],
    found: &[(CanonicalKey, Row)],
) -> Result<Vec<(CanonicalKey, Row)>, JobError> {
    let canon = canonical_keys(primary, rule, keys).await?;
    let present: std::collections::HashSet<&CanonicalKey> = found.iter().map(|(k, _)| k).collect();
    Ok(canon
        .into_iter()
        .zip(keys)
        .filter(|(c, _)| !present.contains(c))
        .map(|(c, text)| {
            let row = rule.key.iter().zip(text).fold(Row::new(), |row, (k, v)| {
                let value = match v {
                    Some(s) => Value::text(25, s),
                    None => Value::null(25),
                };
                row.with(k, value)
            });
            (c, row)
        })
        .collect())
}

/// Each key's canonical form, in order: `SELECT * FROM (VALUES ($1::text::type, ...), ...)`.
async fn canonical_keys(
    primary: &Client,
    rule: &Rule,
    keys: &[KeyText],
) -> Result<Vec<CanonicalKey>, JobError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut params = Vec::new();
    let tuples = super::image::tuples(rule, &mut params, keys)?;
    let q = Query {
        sql: format!("SELECT * FROM (VALUES {}) AS v", tuples.join(", ")),
        params,
    };
    let rows = primary
        .query(&q.sql, &super::image::params(&q))
        .await
        .map_err(JobError::Primary)?;
    rows.iter()
        .map(|r| canonical(r, rule.key.len()).map_err(JobError::Primary))
        .collect()
}

/// The repaired keys compared again, as a verify compares them.
async fn recheck(
    jobs: &Arc<Jobs>,
    run: &Running,
    rule: Arc<Rule>,
    keys: &[KeyText],
) -> Result<Option<TableResult>, JobError> {
    let mut ctx = Ctx::open(jobs, run, rule.clone()).await?;
    let mut result = TableResult {
        table: rule.source.to_string(),
        ..TableResult::default()
    };
    let store = store::connect(&jobs.secondary).await?;
    for batch in keys.chunks(KEYS_PER_CHUNK) {
        let scope = Scope {
            keys: Some(batch.to_vec()),
            ..Scope::default()
        };
        let compared = ctx.compare(scope, None).await;
        jobs.port.unwatch(&rule.source);
        let Some(range) = compared? else {
            return Ok(None);
        };
        ctx.account(&store, &mut result, &range).await?;
    }
    Ok(Some(result))
}
