//! The verify job: the rules' image of each source table compared with its target, range by
//! range in key order, consistently with the mirror.
//!
//! Why a reported difference is real. A range of the source is read in one REPEATABLE READ
//! snapshot S on the primary, after the applier was told to note every key it applies to the
//! table (src/mirror/apply/chunk.rs). The target's range is read once the applier has applied
//! every intent journaled up to the moment after S was taken: every transaction S saw is on the
//! target then, so a key that no transaction invisible to S wrote holds, on the target, exactly
//! what S holds, unless something bypassed the mirror (a write straight to either database, a
//! trigger, a parked transaction): what verify is for. A key that an unseen transaction wrote
//! may differ only because the two reads straddle it: the range is read again (in a new
//! snapshot), a few times; keys that keep changing are counted as unsettled, not reported.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use tokio_postgres::Client;
use tracing::{debug, info};

use super::diff::{diff, DiffOptions, Differences, Image};
use super::image::{self, KeyText, Scope, Side};
use super::reconcile::{self, Groups, ReportRow, StatusCounts};
use super::{store, JobError, Jobs, Running};
use crate::divergence::{Divergence, Kind};
use crate::mirror::apply::{CanonicalKey, Snapshot};
use crate::rules::Rule;

/// Reads of one range before its still-changing keys are given up on.
const ATTEMPTS: u32 = 5;
/// Keys of each kind a result lists.
const SAMPLES: usize = 10;

/// What a verify found in one table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableResult {
    pub table: String,
    pub matched: u64,
    pub missing: u64,
    pub extra: u64,
    pub differing: u64,
    /// Keys that kept changing while they were compared: neither matched nor reported.
    pub unsettled: u64,
    /// The first keys of each kind, with the differing columns (values unless redacted).
    pub samples: Vec<Sample>,
    /// How many of the reconciliation report's rows have each status (`[table.reconcile]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<StatusCounts>,
    /// The reconciliation report's rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report: Vec<ReportRow>,
}

impl TableResult {
    pub fn differences(&self) -> u64 {
        self.missing + self.extra + self.differing
    }
}

/// One key a verify found different.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// missing, extra or differing.
    pub what: String,
    pub key: KeyText,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<Json>,
}

/// Where a verify stands: the tables done, and the one under way up to its last key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Checkpoint {
    pub done: Vec<TableResult>,
    pub current: Option<TableResult>,
    pub last_key: Option<KeyText>,
    /// The reconciliation's aggregates of the current table so far, primary and secondary.
    #[serde(default)]
    pub groups: Option<(Vec<GroupRow>, Vec<GroupRow>)>,
}

/// A verify's `result`: per table, and whether every one is clean.
pub(super) fn result_json(tables: &[TableResult]) -> Json {
    let clean = tables.iter().all(|t| t.differences() == 0);
    json!({ "clean": clean, "tables": tables })
}

/// Verifies `tables` in turn from the checkpoint; the result is stored with the job.
pub(super) async fn run(
    jobs: &Arc<Jobs>,
    run: &Running,
    tables: &[String],
    mut cp: Checkpoint,
) -> Result<super::backfill::Ended, JobError> {
    let secondary = store::connect(&jobs.secondary).await?;
    for table in tables.iter().skip(cp.done.len()) {
        let rule = jobs.verifiable(table)?;
        let Some(result) = verify_table(jobs, run, &secondary, rule, &mut cp).await? else {
            return Ok(super::backfill::Ended::Cancelled);
        };
        metrics::gauge!("pgbridge_verify_differences", "table" => table.clone())
            .set(result.differences() as f64);
        info!(table = %table, matched = result.matched, missing = result.missing,
              extra = result.extra, differing = result.differing, "verify of the table done");
        cp.done.push(result);
    }
    store::set_result(&secondary, run.id, &result_json(&cp.done)).await?;
    Ok(super::backfill::Ended::Done)
}

/// One table, range by range from where the checkpoint stands, each range's findings saved
/// with it; the table's result, or `None` when the job was cancelled (its place saved).
async fn verify_table(
    jobs: &Arc<Jobs>,
    run: &Running,
    store: &Client,
    rule: Arc<Rule>,
    cp: &mut Checkpoint,
) -> Result<Option<TableResult>, JobError> {
    let mut ctx = Ctx::open(jobs, run, rule.clone()).await?;
    let mut result = cp.current.take().unwrap_or_else(|| TableResult {
        table: rule.source.to_string(),
        ..TableResult::default()
    });
    let mut groups = Accumulated::new(&rule, cp.groups.take());
    loop {
        if run.is_cancelled() {
            cp.current = Some(result);
            cp.groups = groups.saved();
            save(store, run, cp).await?;
            return Ok(None);
        }
        jobs.wait_for_lag(run).await;
        let Some(range) = ctx.next_range(cp.last_key.clone()).await? else {
            return Ok(None);
        };
        ctx.account(store, &mut result, &range).await?;
        groups.add(range.groups.clone());
        run.add(range.rows);
        metrics::counter!("pgbridge_verify_rows_total", "table" => rule.source.to_string())
            .increment(range.rows);
        cp.last_key = range.scope.upto.clone();
        cp.current = Some(result.clone());
        cp.groups = groups.saved();
        save(store, run, cp).await?;
        run.throttle().await;
        if cp.last_key.is_none() {
            break;
        }
    }
    (cp.current, cp.groups) = (None, None);
    if let Some(rows) = groups.report(&rule) {
        result.reconcile = Some(StatusCounts::of(&rows));
        result.report = rows;
    }
    Ok(Some(result))
}

/// A table's reconciliation aggregates, primary and secondary, over the ranges compared.
struct Accumulated(Option<(Groups, Groups)>);

impl Accumulated {
    fn new(rule: &Rule, saved: Option<(Vec<GroupRow>, Vec<GroupRow>)>) -> Accumulated {
        let mut acc = Accumulated(
            rule.reconcile
                .as_ref()
                .map(|r| (Groups::new(r), Groups::new(r))),
        );
        acc.add(saved);
        acc
    }

    fn add(&mut self, rows: Option<(Vec<GroupRow>, Vec<GroupRow>)>) {
        if let (Some((p, s)), Some((pr, sr))) = (&mut self.0, rows) {
            p.add(pr);
            s.add(sr);
        }
    }

    fn saved(&self) -> Option<(Vec<GroupRow>, Vec<GroupRow>)> {
        self.0.as_ref().map(|(p, s)| (p.rows(), s.rows()))
    }

    /// The report's rows, dated today (UTC).
    fn report(&self, rule: &Rule) -> Option<Vec<ReportRow>> {
        let ((p, s), rec) = self.0.as_ref().zip(rule.reconcile.as_ref())?;
        let now = crate::divergence::record::rfc3339(std::time::SystemTime::now());
        let table = rule.source.to_string();
        Some(reconcile::report(&now[..10], &table, rec, p, s))
    }
}

async fn save(client: &Client, run: &Running, cp: &Checkpoint) -> Result<(), JobError> {
    let json = serde_json::to_value(cp).map_err(|e| JobError::Corrupt(e.to_string()))?;
    store::set_checkpoint(client, run.id, run.done(), &json).await
}

/// One range compared: what differs, the scope it ended up covering, the source rows it read.
pub(super) struct Range {
    pub diffs: Differences,
    pub scope: Scope,
    pub rows: u64,
    pub unsettled: u64,
    /// The reconciliation's aggregate rows of the range on the primary and the secondary.
    pub groups: Option<(Vec<GroupRow>, Vec<GroupRow>)>,
}

/// One aggregate row: the group's values, then the metrics', as text.
pub type GroupRow = Vec<Option<String>>;

/// One table's verify: its rule and its connections to both sides.
pub(super) struct Ctx<'a> {
    jobs: &'a Arc<Jobs>,
    run: &'a Running,
    pub rule: Arc<Rule>,
    primary: Client,
    secondary: Client,
    opts: DiffOptions,
}

impl<'a> Ctx<'a> {
    pub async fn open(
        jobs: &'a Arc<Jobs>,
        run: &'a Running,
        rule: Arc<Rule>,
    ) -> Result<Ctx<'a>, JobError> {
        let primary = super::backfill::connect_primary(jobs).await?;
        let secondary = super::backfill::connect_pinned(&jobs.secondary)
            .await
            .map_err(JobError::Secondary)?;
        let opts = diff_options(jobs, &rule);
        Ok(Ctx {
            jobs,
            run,
            rule,
            primary,
            secondary,
            opts,
        })
    }

    /// The next range after `after` compared, on new connections after one dropped (a
    /// database restarting), a few times; `None` when the job was cancelled.
    pub async fn next_range(&mut self, after: Option<KeyText>) -> Result<Option<Range>, JobError> {
        let mut attempts = super::backfill::Attempts::default();
        loop {
            let scope = Scope {
                after: after.clone(),
                ..Scope::default()
            };
            let compared = self.compare(scope, Some(self.run.chunk_rows)).await;
            // Noting keys costs the applier a round trip each: only while a range is compared.
            self.jobs.port.unwatch(&self.rule.source);
            match compared {
                Err(e @ (JobError::Primary(_) | JobError::Secondary(_))) => {
                    let rule = self.rule.clone();
                    super::backfill::chunk_failed(&rule, e.to_string(), &mut attempts).await?;
                    if let Ok(fresh) = Ctx::open(self.jobs, self.run, rule).await {
                        *self = fresh;
                    }
                }
                other => return other,
            }
        }
    }

    /// Compares one scope (a range from its first key, `limit` source rows long, or some
    /// keys), reading it again while keys written since its snapshot differ. `None` when the
    /// job was cancelled while it waited for the applier.
    pub async fn compare(
        &mut self,
        mut scope: Scope,
        mut limit: Option<i64>,
    ) -> Result<Option<Range>, JobError> {
        let table = self.rule.source.clone();
        for attempt in 1..=ATTEMPTS {
            self.jobs.port.watch(&table);
            let (snapshot, source, p_groups) = self.read_source(&mut scope, &mut limit).await?;
            let rows = source.len() as u64;
            if !self.caught_up().await {
                return Ok(None);
            }
            let (target, s_groups) = self.read_target(&scope).await?;
            let groups = p_groups.zip(s_groups);
            let mut diffs = diff(source, target, &self.opts);
            let range = |diffs, unsettled| Range {
                diffs,
                scope: scope.clone(),
                rows,
                unsettled,
                groups: groups.clone(),
            };
            if diffs.is_empty() {
                return Ok(Some(range(diffs, 0)));
            }
            // Every change applied before the target was read is noted once this is applied.
            if !self.caught_up().await {
                return Ok(None);
            }
            let hot = self.jobs.port.unseen_written(&table, &snapshot);
            let is_hot = |k: &CanonicalKey| hot.as_ref().is_none_or(|h| h.contains(k));
            let hot_count = diffs.keys().filter(|k| is_hot(k)).count() as u64;
            if hot_count == 0 || attempt == ATTEMPTS {
                diffs.retain(|k| !is_hot(k));
                return Ok(Some(range(diffs, hot_count)));
            }
            debug!(table = %table, attempt, keys = hot_count, "verify range read again");
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        unreachable!("the last attempt returns")
    }

    /// The source's rows of the scope in one snapshot (a first read of a range, `limit` rows
    /// long, fixes where the range ends), and the reconciliation's aggregates of the same rows.
    async fn read_source(
        &self,
        scope: &mut Scope,
        limit: &mut Option<i64>,
    ) -> Result<(Snapshot, Vec<Image>, Option<Vec<GroupRow>>), JobError> {
        let c = &self.primary;
        let snapshot = super::backfill::begin_snapshot(c).await?;
        let read = async {
            let q = image::image_query(&self.rule, Side::Primary, scope, *limit)
                .expect("a verifiable rule has its columns");
            let rows = image::read(c, &self.rule, &q).await?;
            if let Some(n) = limit.take() {
                // The range ends at the last key read, or is open when the source ran out.
                scope.upto = (rows.len() as i64 == n)
                    .then(|| rows.last().map(|i| i.key_text.clone()))
                    .flatten();
            }
            let groups = self.aggregates(c, Side::Primary, scope).await?;
            Ok::<_, tokio_postgres::Error>((rows, groups))
        };
        let result = read.await;
        let _ = c.batch_execute("COMMIT").await;
        let (rows, groups) = result.map_err(JobError::Primary)?;
        Ok((snapshot, rows, groups))
    }

    /// The target's rows of the scope, seen through the rule, and their aggregates, in one
    /// snapshot.
    async fn read_target(
        &self,
        scope: &Scope,
    ) -> Result<(Vec<Image>, Option<Vec<GroupRow>>), JobError> {
        let c = &self.secondary;
        let read = async {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            let q = image::image_query(&self.rule, Side::Secondary, scope, None)
                .expect("a verifiable rule has its columns");
            let rows = image::read(c, &self.rule, &q).await?;
            let groups = self.aggregates(c, Side::Secondary, scope).await?;
            Ok::<_, tokio_postgres::Error>((rows, groups))
        };
        let result = read.await;
        let _ = c.batch_execute("COMMIT").await;
        result.map_err(JobError::Secondary)
    }

    /// The `[table.reconcile]` aggregates of the scope's rows on one side, when the rule has
    /// the section.
    async fn aggregates(
        &self,
        c: &Client,
        side: Side,
        scope: &Scope,
    ) -> Result<Option<Vec<GroupRow>>, tokio_postgres::Error> {
        let Some(rec) = &self.rule.reconcile else {
            return Ok(None);
        };
        let (Ok(from), Ok(cond)) = (
            image::from_clause(&self.rule, side),
            image::condition(&self.rule, side, scope),
        ) else {
            return Ok(None);
        };
        let condition = (!cond.sql.is_empty()).then_some(cond.sql.as_str());
        let sql = reconcile::aggregate_sql(rec, &from, condition);
        let q = image::Query {
            sql,
            params: cond.params,
        };
        let rows = c.query(&q.sql, &image::params(&q)).await?;
        Ok(Some(
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<_, Option<String>>(i))
                        .collect()
                })
                .collect(),
        ))
    }

    /// Waits until the applier applied every intent journaled so far; `false` when the job was
    /// cancelled (or the applier stopped) first.
    async fn caught_up(&self) -> bool {
        let point = self.jobs.port.journal_last();
        loop {
            let wait = self.jobs.port.wait_applied(point);
            match tokio::time::timeout(Duration::from_millis(500), wait).await {
                Ok(reached) => return reached,
                Err(_) if self.run.is_cancelled() => return false,
                Err(_) => {}
            }
        }
    }

    /// Adds a range's findings to the table's result: counts, samples, the keys kept for a
    /// repair, and a `verify_mismatch` record per difference.
    pub async fn account(
        &self,
        store: &Client,
        result: &mut TableResult,
        range: &Range,
    ) -> Result<(), JobError> {
        let d = &range.diffs;
        result.matched += d.matched;
        result.missing += d.missing.len() as u64;
        result.extra += d.extra.len() as u64;
        result.differing += d.differing.len() as u64;
        result.unsettled += range.unsettled;
        let found = self.findings(d);
        let keys: Vec<store::JobKey> = found
            .iter()
            .map(|s| store::JobKey {
                table: result.table.clone(),
                key: s.key.clone(),
                what: s.what.clone(),
                columns: s.columns.clone(),
            })
            .collect();
        store::add_keys(store, self.run.id, &keys).await?;
        for s in found {
            self.record(&s);
            let kept = result.samples.iter().filter(|x| x.what == s.what).count();
            if kept < SAMPLES {
                result.samples.push(s);
            }
        }
        Ok(())
    }

    /// Every difference of a range as a sample (values when not redacted).
    fn findings(&self, d: &Differences) -> Vec<Sample> {
        let redact = self.jobs.recorder.redact();
        let names = self.column_names();
        let row = |i: &Image, cols: &[usize]| -> Option<Json> {
            (!redact).then(|| {
                let pick = |c: usize| (names[c].clone(), i.values[c].display());
                match cols.is_empty() {
                    true => (0..names.len().min(i.values.len())).map(pick).collect(),
                    false => cols.iter().map(|&c| pick(c)).collect(),
                }
            })
        };
        let mut out = Vec::new();
        for i in &d.missing {
            out.push(sample("missing", i, Vec::new(), row(i, &[]), None));
        }
        for i in &d.extra {
            out.push(sample("extra", i, Vec::new(), None, row(i, &[])));
        }
        for x in &d.differing {
            let cols: Vec<String> = x.columns.iter().map(|&c| names[c].clone()).collect();
            let (p, s) = (row(&x.primary, &x.columns), row(&x.secondary, &x.columns));
            out.push(sample("differing", &x.primary, cols, p, s));
        }
        out
    }

    fn column_names(&self) -> Vec<String> {
        let cols = self.rule.source_columns.as_deref().unwrap_or_default();
        cols.iter().map(|c| c.name.clone()).collect()
    }

    fn record(&self, s: &Sample) {
        let mut d = Divergence::new(Kind::VerifyMismatch, self.rule.source.to_string());
        let key: serde_json::Map<String, Json> = self
            .rule
            .key
            .iter()
            .zip(&s.key)
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        d.primary = if s.what == "extra" {
            "absent"
        } else {
            "present"
        }
        .into();
        d.secondary = if s.what == "missing" {
            "absent"
        } else {
            "present"
        }
        .into();
        d.detail = json!({"what": s.what, "job": self.run.id, "key": key, "columns": s.columns,
                          "primary_values": s.primary, "secondary_values": s.secondary});
        self.jobs.recorder.record(d);
    }
}

fn sample(
    what: &str,
    i: &Image,
    columns: Vec<String>,
    primary: Option<Json>,
    secondary: Option<Json>,
) -> Sample {
    Sample {
        what: what.into(),
        key: i.key_text.clone(),
        columns,
        primary,
        secondary,
    }
}

/// The table's `[table.compare]` over `[shadow]`'s: tolerances and ignored columns.
fn diff_options(jobs: &Jobs, rule: &Rule) -> DiffOptions {
    let names: Vec<String> = rule
        .source_columns
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let ignore = rule
        .compare
        .ignore_columns
        .iter()
        .filter_map(|c| names.iter().position(|n| n == c))
        .collect();
    DiffOptions {
        tolerance: (
            rule.compare
                .float_tolerance_abs
                .unwrap_or(jobs.float_tolerance.0),
            rule.compare
                .float_tolerance_rel
                .unwrap_or(jobs.float_tolerance.1),
        ),
        ignore,
    }
}
