//! Migration jobs that run inside `pgbridge serve`; for now the backfill: the source rows that
//! existed before mirroring began, copied to the target through the rule's mapping, in key
//! order, chunk by chunk, resumable, throttled ([`backfill`]; job state in [`store`]).
//!
//! Why a chunk never overtakes a newer mirrored change. A chunk is read in one REPEATABLE READ
//! snapshot S on the primary. Before S is taken the applier is told to note the key (and the
//! xid) of every change it applies to the table from then on (src/mirror/apply/chunk.rs);
//! after S, the journal's last intent id P is sampled, and the chunk is applied by the applier
//! task itself, between batches, once every intent up to P is applied (normally before any
//! intent after P; one taken into a batch before the chunk arrived may go first, see below).
//! - A transaction S saw committed before S; its intent was journaled before its COMMIT was
//!   sent, so its id is at most P: it is applied before the chunk, whose rows are as new as it.
//! - A transaction S did not see (xid in S's xip list, or at least xmax, or unknown) either has
//!   is applied after the chunk, and its images win; or it is applied before the chunk: then
//!   after the watch began (had it been applied before, it would have committed before S and S
//!   would see it), so its keys were noted and the chunk leaves them out. An aborted one is
//!   never applied, and the chunk's row stands, as it should.
//! - A left-out key keeps what the mirror gave it: the mirror's changes are whole row images
//!   and key deletes, so from a key's first mirrored change on the mirror alone is exact for
//!   it. An unseen change with no key (TRUNCATE, a replayed statement) makes the chunk be read
//!   again in a new snapshot. Hence backfill needs `mirror = "rows"` and a key.
//!
//! A chunk's rows and the job's progress (its last key) commit in one secondary transaction, so
//! after a crash the job resumes after the last chunk applied, repeating none.

mod auto;
pub mod backfill;
pub mod diff;
pub mod image;
pub mod reconcile;
pub mod repair;
mod start;
pub use start::JobPlan;
pub mod store;
pub mod summary;
pub mod verify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tracing::{info, warn, Instrument};

use crate::config::{Config, PgUrl};
use crate::divergence::Recorder;
use crate::mirror::apply::ChunkPort;
use crate::rules::{MirrorMode, Rule, RuleSet};
use store::JobRow;

/// Chunk size when none is given.
pub const DEFAULT_CHUNK_ROWS: i64 = 5000;
/// A backfill's rate when none is given: on the 2-core benchmark machine the mirror benchmark's
/// load kept 0.85 of its throughput during a backfill at this rate, 0.70 during an unthrottled
/// one (README, benchmarks). 0 asks for no limit.
pub const DEFAULT_MAX_ROWS_PER_SEC: i64 = 5000;

/// A chunk size given, or the default; checked.
fn chunk_size(rows: Option<i64>) -> Result<i64, JobError> {
    let rows = rows.unwrap_or(DEFAULT_CHUNK_ROWS);
    match (1..=1_000_000).contains(&rows) {
        true => Ok(rows),
        false => Err(JobError::ChunkRows),
    }
}

/// Why a job could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no rule migrates table `{0}`")]
    UnknownTable(String),
    #[error(
        "table `{0}` has no key in its rule: a backfill copies rows in key order and needs one"
    )]
    NoKey(String),
    #[error("table `{0}` is mirrored as `{1}`: a backfill needs mirror = \"rows\"")]
    NotRows(String, &'static str),
    #[error("the rule of `{0}` was not checked against the databases (their columns are unknown)")]
    Unchecked(String),
    #[error("a job on `{0}` is running already (job {1})")]
    Running(String, i64),
    #[error("the writes of `{0}` are on the secondary: the target is the authority now, and a backfill or repair would overwrite it from the legacy table")]
    Authority(String),
    #[error("table `{0}` has no key in its rule: a verify matches rows by key and needs one")]
    VerifyNoKey(String),
    #[error("no verify of `{0}` to repair from{1}")]
    NoVerify(String, String),
    #[error("no job {0}")]
    NoJob(i64),
    #[error("chunk_rows must be between 1 and 1000000")]
    ChunkRows,
    #[error("the secondary: {}", crate::net::error_text(.0))]
    Secondary(#[source] tokio_postgres::Error),
    #[error("the primary: {}", crate::net::error_text(.0))]
    Primary(#[source] tokio_postgres::Error),
    #[error("unexpected job data: {0}")]
    Corrupt(String),
    #[error("a chunk kept failing: {0}")]
    Chunk(String),
    #[error("the mirror applier has stopped")]
    ApplierStopped,
}

/// A job as the admin API shows it: its row and its progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    #[serde(flatten)]
    pub row: JobRow,
    pub progress: Progress,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub done: i64,
    pub total: Option<i64>,
    /// Rows per second in this process's run of the job.
    pub rows_per_sec: f64,
    pub eta_seconds: Option<f64>,
}

/// A job running in this process.
pub(crate) struct Running {
    pub id: i64,
    /// backfill, verify or repair.
    pub kind: String,
    /// The table, or a verify's tables joined by commas.
    pub table: String,
    /// The tables the job works on (no two jobs work on one table at once).
    pub tables: Vec<String>,
    pub chunk_rows: i64,
    max_rows_per_sec: i64,
    cancel: AtomicBool,
    done: AtomicI64,
    total: AtomicI64,
    /// Rows done when this run began, and when.
    at_start: i64,
    started: Instant,
    ended: tokio::sync::Notify,
}

impl Running {
    fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.done.fetch_add(n as i64, Ordering::Relaxed);
    }

    fn done(&self) -> i64 {
        self.done.load(Ordering::Relaxed)
    }

    fn progress(&self) -> Progress {
        let done = self.done.load(Ordering::Relaxed);
        let total = Some(self.total.load(Ordering::Relaxed)).filter(|t| *t >= 0);
        let total = shown_total(total, done);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (done - self.at_start) as f64 / secs;
        let eta = total
            .filter(|_| rate > 0.0)
            .map(|t| ((t - done).max(0) as f64) / rate);
        Progress {
            done,
            total,
            rows_per_sec: rate,
            eta_seconds: eta,
        }
    }

    /// Sleeps as long as `max_rows_per_sec` asks.
    async fn throttle(&self) {
        if self.max_rows_per_sec <= 0 {
            return;
        }
        let rows = (self.done.load(Ordering::Relaxed) - self.at_start) as f64;
        let due = Duration::from_secs_f64(rows / self.max_rows_per_sec as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The total a job shows beside `done`: the count taken at its start, or `done` once the rows
/// the applications inserted meanwhile have made it larger (never "12,000 of 10,000").
fn shown_total(total: Option<i64>, done: i64) -> Option<i64> {
    total.map(|t| t.max(done))
}

/// The jobs of a serving proxy.
pub struct Jobs {
    /// Each table's write direction: a table whose writes are on the secondary gets no
    /// backfill or repair (src/writes/mod.rs).
    writes: Arc<crate::writes::WriteFlags>,
    primary: PgUrl,
    secondary: PgUrl,
    recorder: Arc<Recorder>,
    /// `[shadow]`'s float tolerance (absolute, relative), under each rule's `[table.compare]`.
    float_tolerance: (f64, f64),
    rules: Arc<ArcSwap<RuleSet>>,
    port: ChunkPort,
    max_lag_seconds: f64,
    max_lag_transactions: u64,
    running: Mutex<HashMap<i64, Arc<Running>>>,
    /// This instance's name: a running job is held by one instance at a time, which renews
    /// its lease; another takes it over once the lease lapsed (src/migrate/store.rs).
    instance: String,
    /// Each table's last jobs, as `pgbridge.jobs` says (status shows them).
    summaries: Mutex<HashMap<String, summary::TableSummary>>,
}

/// How often the jobs' leases are renewed, and abandoned jobs looked for.
const LEASE_EVERY: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a rule can be backfilled; its live rule when it can.
pub fn backfillable(rules: &RuleSet, table: &str) -> Result<Arc<Rule>, JobError> {
    let rule = find(rules, table)?;
    if rule.key.is_empty() {
        return Err(JobError::NoKey(table.to_string()));
    }
    if rule.mirror != MirrorMode::Rows {
        return Err(JobError::NotRows(table.to_string(), rule.mirror.as_str()));
    }
    if rule.source_columns.is_none() {
        return Err(JobError::Unchecked(table.to_string()));
    }
    Ok(rule)
}

/// Whether a rule can be verified (or repaired): checked, with a key; its live rule when it can.
pub fn verifiable(rules: &RuleSet, table: &str) -> Result<Arc<Rule>, JobError> {
    let rule = find(rules, table)?;
    if rule.key.is_empty() {
        return Err(JobError::VerifyNoKey(table.to_string()));
    }
    if rule.source_columns.is_none() || rule.target_columns.is_none() {
        return Err(JobError::Unchecked(table.to_string()));
    }
    Ok(rule)
}

fn find(rules: &RuleSet, table: &str) -> Result<Arc<Rule>, JobError> {
    rules
        .lookup(table)
        .cloned()
        .ok_or_else(|| JobError::UnknownTable(table.to_string()))
}

impl Jobs {
    /// The jobs of a proxy with a secondary; resumes the backfills a previous process left
    /// running.
    pub fn start(
        config: &Config,
        secondary: PgUrl,
        rules: Arc<ArcSwap<RuleSet>>,
        port: ChunkPort,
        recorder: Arc<Recorder>,
        writes: Arc<crate::writes::WriteFlags>,
    ) -> Arc<Jobs> {
        let jobs = Arc::new(Jobs {
            writes,
            primary: config.primary.url.clone(),
            secondary,
            recorder,
            float_tolerance: (
                config.shadow.float_tolerance_abs,
                config.shadow.float_tolerance_rel,
            ),
            rules,
            port,
            max_lag_seconds: config.admin.gate_max_lag_seconds,
            max_lag_transactions: config.admin.gate_max_lag_transactions,
            running: Mutex::default(),
            instance: config.instance_name(),
            summaries: Mutex::default(),
        });
        let resumer = jobs.clone();
        tokio::spawn(async move { resumer.resume().await }.in_current_span());
        jobs.spawn_auto(config.verify.clone());
        jobs
    }

    fn backfillable(&self, table: &str) -> Result<Arc<Rule>, JobError> {
        backfillable(&self.rules.load(), table)
    }

    fn verifiable(&self, table: &str) -> Result<Arc<Rule>, JobError> {
        verifiable(&self.rules.load(), table)
    }

    /// Runs a job in a task of its own, unless it already runs here.
    fn spawn(self: &Arc<Self>, row: JobRow) {
        let tables = match row.kind.as_str() {
            "verify" => row.table.split(',').map(str::to_string).collect(),
            _ => vec![row.table.clone()],
        };
        let run = Arc::new(Running {
            id: row.id,
            kind: row.kind.clone(),
            table: row.table.clone(),
            tables,
            chunk_rows: row.chunk_rows,
            max_rows_per_sec: row.max_rows_per_sec,
            cancel: AtomicBool::new(false),
            done: AtomicI64::new(row.rows_done),
            total: AtomicI64::new(row.rows_total.unwrap_or(-1)),
            at_start: row.rows_done,
            started: Instant::now(),
            ended: tokio::sync::Notify::new(),
        });
        {
            // One task per job: the resumption of jobs left running by a previous process
            // (retried until the secondary answers) may find a job this process just started.
            let mut running = lock(&self.running);
            if running.contains_key(&row.id) {
                return;
            }
            running.insert(row.id, run.clone());
        }
        let jobs = self.clone();
        let span = tracing::info_span!("job", job = row.id, kind = %row.kind, table = %row.table);
        tokio::spawn(async move { jobs.run(run, row).await }.instrument(span));
    }

    /// The job's own loop, by kind.
    async fn work(
        self: &Arc<Self>,
        run: &Running,
        row: JobRow,
    ) -> Result<backfill::Ended, JobError> {
        match run.kind.as_str() {
            "backfill" => backfill::copy(self, run, row.last_key).await,
            "verify" => {
                let client = store::connect(&self.secondary).await?;
                let cp = store::checkpoint(&client, run.id).await?;
                let cp = cp
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(|e| JobError::Corrupt(e.to_string()))?
                    .unwrap_or_default();
                verify::run(self, run, &run.tables, cp).await
            }
            "repair" => {
                let verify = row.params.as_ref().and_then(|p| p["verify"].as_i64());
                let verify = verify
                    .ok_or_else(|| JobError::Corrupt("a repair without its verify".into()))?;
                repair::run(self, run, verify).await
            }
            other => Err(JobError::Corrupt(format!("a job of kind {other}"))),
        }
    }

    async fn run(self: Arc<Self>, run: Arc<Running>, row: JobRow) {
        match self.claim(run.id).await {
            Ok(true) => {}
            held => {
                if let Err(e) = held {
                    warn!(error = %e, "cannot take the job");
                }
                lock(&self.running).remove(&run.id);
                return;
            }
        }
        let result = self.work(&run, row).await;
        let (state, error) = match &result {
            Ok(backfill::Ended::Done) => ("done", None),
            Ok(backfill::Ended::Cancelled) => ("cancelled", None),
            Err(e) => ("failed", Some(e.to_string())),
        };
        if let Some(e) = &error {
            warn!(error = %e, "job failed");
        }
        for t in &run.tables {
            if let Ok(rule) = find(&self.rules.load(), t) {
                self.port.unwatch(&rule.source);
            }
        }
        if let Err(e) = self.finish(run.id, state, error.as_deref()).await {
            warn!(error = %e, "cannot record the end of the job");
        }
        info!(state, rows = run.done(), "job ended");
        lock(&self.running).remove(&run.id);
        self.refresh().await;
        run.ended.notify_waiters();
    }

    async fn finish(&self, id: i64, state: &str, error: Option<&str>) -> Result<(), JobError> {
        let client = store::connect(&self.secondary).await?;
        store::finish(&client, id, state, error).await
    }

    /// Waits while the mirror lags beyond the gate's bounds: the applications' writes first.
    async fn wait_for_lag(&self, run: &Running) {
        let mut paused = false;
        loop {
            let r = self.port.report();
            let lagging = r.lag_seconds > self.max_lag_seconds
                || r.lag_transactions > self.max_lag_transactions;
            if !lagging || run.is_cancelled() {
                if paused {
                    info!("backfill goes on: the mirror caught up");
                }
                return;
            }
            if !paused {
                info!(
                    lag_seconds = r.lag_seconds,
                    lag_transactions = r.lag_transactions,
                    "backfill paused while the mirror lags"
                );
                paused = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether this instance holds job `id` now.
    async fn claim(&self, id: i64) -> Result<bool, JobError> {
        let client = store::connect(&self.secondary).await?;
        store::claim(&client, id, &self.instance).await
    }

    /// Resumes the jobs left running by a previous process of this instance, and those whose
    /// instance stopped renewing their lease (another instance's, taken over); renews the
    /// lease of those running here. Every [`LEASE_EVERY`], for the life of the process.
    async fn resume(self: Arc<Self>) {
        let mut first = true;
        loop {
            match self.running_rows().await {
                Ok(rows) => {
                    for row in rows {
                        if lock(&self.running).contains_key(&row.id) {
                            continue;
                        }
                        let ours = row.owner.as_deref().is_none_or(|o| o == self.instance);
                        if !ours && !row.lease_lapsed {
                            continue;
                        }
                        info!(job = row.id, kind = %row.kind, table = %row.table, from = ?row.owner, "resuming the job");
                        self.spawn(row);
                    }
                    if first {
                        self.refresh().await;
                        first = false;
                    }
                    if let Err(e) = self.renew().await {
                        warn!(error = %e, "cannot renew the jobs' lease");
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the jobs to resume; retrying"),
            }
            tokio::time::sleep(LEASE_EVERY).await;
        }
    }

    async fn renew(&self) -> Result<(), JobError> {
        if lock(&self.running).is_empty() {
            return Ok(());
        }
        let client = store::connect(&self.secondary).await?;
        store::renew(&client, &self.instance).await.map(|_| ())
    }

    async fn running_rows(&self) -> Result<Vec<JobRow>, JobError> {
        let client = store::connect(&self.secondary).await?;
        store::list(&client, Some("running")).await
    }

    /// Every job, newest first.
    pub async fn list(&self) -> Result<Vec<JobView>, JobError> {
        let client = store::connect(&self.secondary).await?;
        let rows = store::list(&client, None).await?;
        Ok(rows.into_iter().map(|r| self.view(r)).collect())
    }

    pub async fn get(&self, id: i64) -> Result<JobView, JobError> {
        let client = store::connect(&self.secondary).await?;
        let row = store::get(&client, id).await?.ok_or(JobError::NoJob(id))?;
        Ok(self.view(row))
    }

    /// Cancels a running job and waits (a while) for it to stop; the job as it ended.
    pub async fn cancel(&self, id: i64) -> Result<JobView, JobError> {
        let run = lock(&self.running).get(&id).cloned();
        match run {
            Some(run) => {
                let ended = run.ended.notified();
                run.cancel.store(true, Ordering::Relaxed);
                let _ = tokio::time::timeout(Duration::from_secs(30), ended).await;
            }
            None => {
                let job = self.get(id).await?;
                if job.row.state == "running" {
                    self.finish(id, "cancelled", None).await?;
                }
            }
        }
        self.get(id).await
    }

    /// A job's row with its live progress when it runs here.
    fn view(&self, row: JobRow) -> JobView {
        let live = lock(&self.running).get(&row.id).map(|r| r.progress());
        let progress = live.unwrap_or(Progress {
            done: row.rows_done,
            total: shown_total(row.rows_total, row.rows_done),
            rows_per_sec: 0.0,
            eta_seconds: None,
        });
        JobView { row, progress }
    }

    /// Reads every table's last jobs again from `pgbridge.jobs`.
    async fn refresh(&self) {
        let loaded = match store::connect(&self.secondary).await {
            Ok(client) => summary::load(&client).await,
            Err(e) => Err(e),
        };
        match loaded {
            Ok(s) => *lock(&self.summaries) = s,
            Err(e) => warn!(error = %e, "cannot read the jobs for status"),
        }
    }

    /// A table's last jobs for `/api/status`: its backfill running here (with its live
    /// progress) or its last one, and its last verify.
    pub fn table_summary(&self, table: &str) -> summary::TableSummary {
        let mut s = lock(&self.summaries)
            .get(table)
            .map(summary::TableSummary::now)
            .unwrap_or_default();
        let running = lock(&self.running)
            .values()
            .find(|r| r.kind == "backfill" && r.table == table)
            .map(|r| summary::BackfillSummary {
                job: r.id,
                state: "running".into(),
                progress: r.progress(),
            });
        if running.is_some() {
            s.backfill = running;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::view::tests::dxy_rule;

    #[test]
    fn only_a_checked_rule_with_a_key_mirroring_rows_is_backfilled() {
        let ok = RuleSet::new(vec![dxy_rule()]);
        assert!(backfillable(&ok, "derived_data_bars").is_ok());
        assert!(backfillable(&ok, "public.derived_data_bars").is_ok());
        let unknown = backfillable(&ok, "nope").unwrap_err();
        assert_eq!(unknown.to_string(), "no rule migrates table `nope`");
        let mut keyless = dxy_rule();
        keyless.key.clear();
        keyless.mirror = MirrorMode::Statements;
        let err = backfillable(&RuleSet::new(vec![keyless]), "derived_data_bars").unwrap_err();
        assert!(matches!(err, JobError::NoKey(_)), "{err}");
        let mut statements = dxy_rule();
        statements.mirror = MirrorMode::Statements;
        let err = backfillable(&RuleSet::new(vec![statements]), "derived_data_bars").unwrap_err();
        assert!(err.to_string().contains("mirror = \"rows\""), "{err}");
    }

    #[test]
    fn progress_has_a_rate_and_an_eta() {
        let run = Running {
            id: 1,
            kind: "backfill".into(),
            table: "t".into(),
            tables: vec!["t".into()],
            chunk_rows: 10,
            max_rows_per_sec: 0,
            cancel: AtomicBool::new(false),
            done: AtomicI64::new(100),
            total: AtomicI64::new(1000),
            at_start: 100,
            started: Instant::now() - Duration::from_secs(10),
            ended: tokio::sync::Notify::new(),
        };
        run.add(500);
        let p = run.progress();
        assert_eq!((p.done, p.total), (600, Some(1000)));
        assert!((p.rows_per_sec - 50.0).abs() < 1.0, "{p:?}");
        assert!((p.eta_seconds.unwrap() - 8.0).abs() < 0.5, "{p:?}");
        run.add(700);
        let p = run.progress();
        assert_eq!((p.done, p.total), (1300, Some(1300)), "never done > total");
        assert_eq!(p.eta_seconds, Some(0.0));
    }

    #[test]
    fn a_total_outgrown_by_the_rows_done_shows_the_rows_done() {
        assert_eq!(shown_total(Some(10_000), 12_000), Some(12_000));
        assert_eq!(shown_total(Some(10_000), 9_000), Some(10_000));
        assert_eq!(shown_total(None, 9_000), None);
    }
}
