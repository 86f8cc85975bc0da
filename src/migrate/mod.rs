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

pub mod backfill;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tracing::{info, warn, Instrument};

use crate::config::{Config, PgUrl};
use crate::mirror::apply::ChunkPort;
use crate::rules::{MirrorMode, Rule, RuleSet};
use store::JobRow;

/// Chunk size when none is given.
pub const DEFAULT_CHUNK_ROWS: i64 = 5000;

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
    #[error("a backfill of `{0}` is running already (job {1})")]
    Running(String, i64),
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
    pub table: String,
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
    primary: PgUrl,
    secondary: PgUrl,
    rules: Arc<ArcSwap<RuleSet>>,
    port: ChunkPort,
    max_lag_seconds: f64,
    max_lag_transactions: u64,
    running: Mutex<HashMap<i64, Arc<Running>>>,
    /// The last job of each table in this process (status shows it).
    latest: Mutex<HashMap<String, (i64, String, Progress)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a rule can be backfilled; its live rule when it can.
pub fn backfillable(rules: &RuleSet, table: &str) -> Result<Arc<Rule>, JobError> {
    let rule = rules
        .rules()
        .iter()
        .find(|r| {
            let full = format!("{}.{}", r.source.schema, r.source.name);
            r.source.to_string() == table || full == table
        })
        .ok_or_else(|| JobError::UnknownTable(table.to_string()))?;
    if rule.key.is_empty() {
        return Err(JobError::NoKey(table.to_string()));
    }
    if rule.mirror != MirrorMode::Rows {
        return Err(JobError::NotRows(table.to_string(), rule.mirror.as_str()));
    }
    if rule.source_columns.is_none() {
        return Err(JobError::Unchecked(table.to_string()));
    }
    Ok(rule.clone())
}

impl Jobs {
    /// The jobs of a proxy with a secondary; resumes the backfills a previous process left
    /// running.
    pub fn start(
        config: &Config,
        secondary: PgUrl,
        rules: Arc<ArcSwap<RuleSet>>,
        port: ChunkPort,
    ) -> Arc<Jobs> {
        let jobs = Arc::new(Jobs {
            primary: config.primary.url.clone(),
            secondary,
            rules,
            port,
            max_lag_seconds: config.admin.gate_max_lag_seconds,
            max_lag_transactions: config.admin.gate_max_lag_transactions,
            running: Mutex::default(),
            latest: Mutex::default(),
        });
        let resumer = jobs.clone();
        tokio::spawn(async move { resumer.resume().await }.in_current_span());
        jobs
    }

    fn backfillable(&self, table: &str) -> Result<Arc<Rule>, JobError> {
        backfillable(&self.rules.load(), table)
    }

    /// Starts a backfill of `table` (resuming its last cancelled or failed one); its job id.
    pub async fn start_backfill(
        self: &Arc<Self>,
        table: &str,
        chunk_rows: Option<i64>,
        max_rows_per_sec: Option<i64>,
    ) -> Result<i64, JobError> {
        let rule = self.backfillable(table)?;
        let table = rule.source.to_string();
        let chunk_rows = chunk_rows.unwrap_or(DEFAULT_CHUNK_ROWS);
        if !(1..=1_000_000).contains(&chunk_rows) {
            return Err(JobError::ChunkRows);
        }
        if let Some(r) = lock(&self.running).values().find(|r| r.table == table) {
            return Err(JobError::Running(table, r.id));
        }
        let client = store::connect(&self.secondary).await?;
        let earlier = store::list(&client, None).await?.into_iter().find(|j| {
            j.kind == "backfill" && j.table == table && j.state != "done" && j.state != "running"
        });
        let (mut row, resumed) = match earlier {
            Some(j) => {
                store::reopen(&client, j.id).await?;
                (j, true)
            }
            None => {
                let rate = max_rows_per_sec.unwrap_or(0);
                let id = store::create(&client, "backfill", &table, chunk_rows, rate).await?;
                let row = store::get(&client, id).await?.ok_or(JobError::NoJob(id))?;
                (row, false)
            }
        };
        row.chunk_rows = chunk_rows;
        row.max_rows_per_sec = max_rows_per_sec.unwrap_or(row.max_rows_per_sec);
        if row.rows_total.is_none() {
            let total = backfill::count(self, &rule).await?;
            store::set_total(&client, row.id, total).await?;
            row.rows_total = Some(total);
        }
        info!(job = row.id, table = %table, resumed, "backfill started");
        let id = row.id;
        self.spawn(row);
        Ok(id)
    }

    /// Runs a job in a task of its own, unless it already runs here.
    fn spawn(self: &Arc<Self>, row: JobRow) {
        let run = Arc::new(Running {
            id: row.id,
            table: row.table.clone(),
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
        let span = tracing::info_span!("backfill", job = row.id, table = %row.table);
        tokio::spawn(async move { jobs.run(run, row.last_key).await }.instrument(span));
    }

    async fn run(self: Arc<Self>, run: Arc<Running>, last_key: Option<Vec<Option<String>>>) {
        let result = backfill::copy(&self, &run, last_key).await;
        let (state, error) = match &result {
            Ok(backfill::Ended::Done) => ("done", None),
            Ok(backfill::Ended::Cancelled) => ("cancelled", None),
            Err(e) => ("failed", Some(e.to_string())),
        };
        if let Some(e) = &error {
            warn!(error = %e, "backfill failed");
        }
        if let Ok(rule) = self.backfillable(&run.table) {
            self.port.unwatch(&rule.source);
        }
        if let Err(e) = self.finish(run.id, state, error.as_deref()).await {
            warn!(error = %e, "cannot record the end of the backfill");
        }
        info!(
            state,
            rows = run.done.load(Ordering::Relaxed),
            "backfill ended"
        );
        let progress = run.progress();
        lock(&self.latest).insert(run.table.clone(), (run.id, state.to_string(), progress));
        lock(&self.running).remove(&run.id);
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

    /// Resumes the backfills left running by a previous process (retrying until the secondary
    /// answers).
    async fn resume(self: Arc<Self>) {
        loop {
            match self.running_rows().await {
                Ok(rows) => {
                    for row in rows {
                        info!(job = row.id, table = %row.table, "resuming the backfill");
                        self.spawn(row);
                    }
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot read the jobs to resume; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    async fn running_rows(&self) -> Result<Vec<JobRow>, JobError> {
        let client = store::connect(&self.secondary).await?;
        let rows = store::list(&client, Some("running")).await?;
        Ok(rows.into_iter().filter(|r| r.kind == "backfill").collect())
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

    /// The backfill of `table` running here, or the last one that ended here: id, state and
    /// progress, for `/api/status`.
    pub fn table_backfill(&self, table: &str) -> Option<(i64, String, Progress)> {
        let running = lock(&self.running)
            .values()
            .find(|r| r.table == table)
            .map(|r| (r.id, "running".to_string(), r.progress()));
        running.or_else(|| lock(&self.latest).get(table).cloned())
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
            table: "t".into(),
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
