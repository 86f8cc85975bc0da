//! Shadow reads: a read the primary served runs again, rewritten, on the secondary, and the two
//! answers are compared ([`crate::divergence::compare`]). A difference is a `read_mismatch`
//! record; an error on the secondary a `secondary_error` with its SQLSTATE (`timeout` when it
//! took longer than `[shadow] timeout_ms`, `connection` when the secondary could not be reached).
//!
//! Shadow reads are optional work and never delay the client (DESIGN.md, principle 8): the
//! session asks for a [`Ticket`] first ([`Shadow::ticket`], which samples at `[shadow] sample`
//! and admits at most `max_concurrency + queue` reads at once without waiting), collects the
//! primary's result only when it got one, and hands the job over with [`Ticket::submit`]. A read
//! that is not admitted is dropped and counted, unlike a mirror write.
//!
//! A job runs on one of at most `max_concurrency` secondary connections (pgbridge's own
//! credentials, `[secondary] url`), each read-only (`default_transaction_read_only`) and with a
//! server-side `statement_timeout`. The session's settings the job carries (DateStyle, TimeZone,
//! search_path, ...) are set on the connection before the read, so both sides answer alike.
//! When the job names the journal position the primary's answer saw, the read waits (within the
//! timeout) until the mirror applied it, so mirror lag is not taken for a difference.
//!
//! Every outcome is counted in `pgbridge_shadow_reads_total{table,result}`, result one of
//! `equal`, `mismatch`, `error`, `timeout`, `lagging`, `dropped`.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};
use tracing::debug;

use crate::config::ShadowConfig;
use crate::divergence::compare::{compare, CompareOptions, Difference, Field, ResultSet};
use crate::divergence::{Divergence, Kind, Recorder};
use crate::mirror::Value;
use crate::rules::RuleSet;

/// `[shadow]` and where the secondary is.
#[derive(Debug, Clone)]
pub struct ShadowOptions {
    pub sample: f64,
    pub max_concurrency: usize,
    pub queue: usize,
    pub timeout: Duration,
    pub float_abs: f64,
    pub float_rel: f64,
    /// pgbridge's own connection to the secondary.
    pub secondary: tokio_postgres::Config,
}

impl ShadowOptions {
    pub fn new(c: &ShadowConfig, secondary: &tokio_postgres::Config) -> ShadowOptions {
        ShadowOptions {
            sample: c.sample,
            max_concurrency: c.max_concurrency.max(1),
            queue: c.queue,
            timeout: Duration::from_millis(c.timeout_ms),
            float_abs: c.float_tolerance_abs,
            float_rel: c.float_tolerance_rel,
            secondary: secondary.clone(),
        }
    }
}

/// One read to run on the secondary and compare.
#[derive(Debug, Clone)]
pub struct ShadowJob {
    /// The read rewritten for the secondary (`Analysis::read_rewrite`).
    pub sql: String,
    /// Its parameters as the client bound them, with their type OIDs (text or binary).
    pub params: Vec<Value>,
    /// Session settings to set on the secondary first (DateStyle, TimeZone, extra_float_digits,
    /// IntervalStyle, bytea_output, search_path), as `(name, value)`.
    pub settings: Vec<(String, String)>,
    /// The migrated table the record is for, as rules name it.
    pub table: String,
    /// The client's statement, normalized (`divergence::normalize_query`).
    pub query: String,
    /// The primary's answer: RowDescription fields (with the formats the client asked for) and
    /// the DataRow values.
    pub primary: ResultSet,
    pub session: Option<u64>,
    /// The journal id the secondary must have applied first: the last id committed when the
    /// primary answered (`Journal::last_id`). `None`: run at once.
    pub after: Option<u64>,
    /// The read orders its rows (then they compare in order, else as multisets).
    pub ordered: bool,
}

/// What became of one shadow read.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Equal,
    Mismatch(Difference),
    /// The secondary's SQLSTATE, or `connection`.
    Error(String),
    Timeout,
    /// The mirror had not applied the writes the primary's answer saw, within the timeout.
    Lagging,
    /// Not admitted (queue full) or waited too long for a connection.
    Dropped,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Equal => "equal",
            Outcome::Mismatch(_) => "mismatch",
            Outcome::Error(_) => "error",
            Outcome::Timeout => "timeout",
            Outcome::Lagging => "lagging",
            Outcome::Dropped => "dropped",
        }
    }
}

/// The shadow-read executor; share it in an `Arc`.
pub struct Shadow {
    inner: Arc<Inner>,
}

struct Inner {
    opts: ShadowOptions,
    recorder: Arc<Recorder>,
    rules: Arc<ArcSwap<RuleSet>>,
    applied: Option<watch::Receiver<u64>>,
    /// Reads admitted: running or waiting for a connection.
    admitted: Arc<Semaphore>,
    /// Reads running on the secondary.
    running: Arc<Semaphore>,
    idle: Mutex<Vec<Conn>>,
}

/// A secondary connection, with the settings it has and the statements it prepared.
struct Conn {
    client: Client,
    settings: Vec<(String, String)>,
    prepared: HashMap<String, Statement>,
}

/// A reserved place for one shadow read; dropping it unused frees the place.
pub struct Ticket {
    permit: OwnedSemaphorePermit,
    inner: Arc<Inner>,
}

/// Statements kept prepared per connection.
const PREPARED_PER_CONN: usize = 256;

impl Shadow {
    /// `applied` follows the mirror's applied journal id (`ApplierHandle::subscribe`).
    pub fn new(
        opts: ShadowOptions,
        recorder: Arc<Recorder>,
        rules: Arc<ArcSwap<RuleSet>>,
        applied: Option<watch::Receiver<u64>>,
    ) -> Shadow {
        let admitted = Arc::new(Semaphore::new(opts.max_concurrency + opts.queue));
        let running = Arc::new(Semaphore::new(opts.max_concurrency));
        Shadow {
            inner: Arc::new(Inner {
                opts,
                recorder,
                rules,
                applied,
                admitted,
                running,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Whether to shadow this read: sampled at `[shadow] sample`, and a place is free. Never
    /// waits. `None`: do not collect the primary's result; a full queue counts as `dropped`.
    pub fn ticket(&self, table: &str) -> Option<Ticket> {
        if !self.sampled() {
            return None;
        }
        self.admit(table)
    }

    /// The sampling draw alone: whether to shadow a read at `[shadow] sample`. A session draws
    /// before it sends the read, so that an unsampled read costs nothing more.
    pub fn sampled(&self) -> bool {
        let sample = self.inner.opts.sample;
        sample >= 1.0 || rand::random::<f64>() < sample
    }

    /// Admission alone, for a read already sampled: a place is free. Never waits.
    pub fn admit(&self, table: &str) -> Option<Ticket> {
        match self.inner.admitted.clone().try_acquire_owned() {
            Ok(permit) => Some(Ticket {
                permit,
                inner: self.inner.clone(),
            }),
            Err(_) => {
                count(table, &Outcome::Dropped);
                None
            }
        }
    }

    /// Shadow reads admitted and not finished.
    pub fn in_flight(&self) -> usize {
        let o = &self.inner.opts;
        o.max_concurrency + o.queue - self.inner.admitted.available_permits()
    }
}

impl Ticket {
    /// Runs the job in the background; returns at once. The handle may be dropped; awaiting it
    /// gives the outcome (tests).
    pub fn submit(self, job: ShadowJob) -> JoinHandle<Outcome> {
        tokio::spawn(async move {
            let Ticket { permit, inner } = self;
            let outcome = inner.run(&job).await;
            count(&job.table, &outcome);
            inner.record(&job, &outcome);
            drop(permit);
            outcome
        })
    }
}

fn count(table: &str, outcome: &Outcome) {
    metrics::counter!("pgbridge_shadow_reads_total",
        "table" => table.to_string(), "result" => outcome.label())
    .increment(1);
}

/// Any value's raw bytes, as the wire carried them.
struct Raw(Option<bytes::Bytes>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(Some(bytes::Bytes::copy_from_slice(raw))))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Why a read on the secondary failed.
/// SQLSTATE of a statement cancelled, here by `statement_timeout`.
const QUERY_CANCELED: &str = "57014";

enum RunError {
    Timeout,
    Failed(String, String),
}

impl Inner {
    async fn run(&self, job: &ShadowJob) -> Outcome {
        let deadline = Instant::now() + self.opts.timeout;
        let Ok(Ok(_running)) =
            tokio::time::timeout_at(deadline.into(), self.running.clone().acquire_owned()).await
        else {
            return Outcome::Dropped;
        };
        if let (Some(after), Some(applied)) = (job.after, &self.applied) {
            let mut applied = applied.clone();
            let caught_up =
                tokio::time::timeout_at(deadline.into(), applied.wait_for(|&id| id >= after)).await;
            if !matches!(caught_up, Ok(Ok(_))) {
                return Outcome::Lagging;
            }
        }
        let secondary = match self.query(job, deadline).await {
            Ok(r) => r,
            Err(RunError::Timeout) => return Outcome::Timeout,
            // The server's statement_timeout can fire before the client-side deadline does.
            Err(RunError::Failed(code, _)) if code == QUERY_CANCELED => return Outcome::Timeout,
            Err(RunError::Failed(code, message)) => {
                debug!(code, message, "shadow read failed on the secondary");
                return Outcome::Error(code);
            }
        };
        // The table's `[table.compare]` over `[shadow]`'s.
        let rules = self.rules.load();
        let rule = rules.lookup(&job.table);
        let compare_rule = rule.map(|r| &r.compare);
        let opts = CompareOptions {
            ordered: job.ordered,
            key: rule.map(|r| r.key.clone()).unwrap_or_default(),
            float_abs: compare_rule
                .and_then(|c| c.float_tolerance_abs)
                .unwrap_or(self.opts.float_abs),
            float_rel: compare_rule
                .and_then(|c| c.float_tolerance_rel)
                .unwrap_or(self.opts.float_rel),
            ignore: compare_rule
                .map(|c| c.ignore_columns.clone())
                .unwrap_or_default(),
            redact: self.recorder.redact(),
            ..CompareOptions::default()
        };
        match compare(&job.primary, &secondary, &opts) {
            None => Outcome::Equal,
            Some(d) => Outcome::Mismatch(d),
        }
    }

    /// Runs the job's read on a pooled connection; a connection that timed out or failed is
    /// not returned to the pool.
    async fn query(&self, job: &ShadowJob, deadline: Instant) -> Result<ResultSet, RunError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) if !c.client.is_closed() => c,
            _ => match tokio::time::timeout_at(deadline.into(), self.connect()).await {
                Err(_) => return Err(RunError::Timeout),
                Ok(Err(e)) => return Err(failed(&e)),
                Ok(Ok(c)) => c,
            },
        };
        let cancel = conn.client.cancel_token();
        match tokio::time::timeout_at(deadline.into(), run_on(&mut conn, job)).await {
            Ok(Ok(rs)) => {
                self.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
                Ok(rs)
            }
            Ok(Err(e)) => {
                // A statement error leaves the connection usable; anything else does not.
                if e.as_db_error().is_some() && !conn.client.is_closed() {
                    self.idle
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(conn);
                }
                Err(failed(&e))
            }
            Err(_) => {
                tokio::spawn(async move {
                    let _ = cancel.cancel_query(NoTls).await;
                });
                Err(RunError::Timeout)
            }
        }
    }

    async fn connect(&self) -> Result<Conn, tokio_postgres::Error> {
        let (client, connection) = self.opts.secondary.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "shadow connection to the secondary ended");
            }
        });
        // A shadow read can never write the secondary, and never outlives its timeout there.
        let ms = self.opts.timeout.as_millis().max(1);
        client
            .batch_execute(&format!(
                "SET default_transaction_read_only = on; SET statement_timeout = {ms}; \
                 SET application_name = 'pgbridge shadow'"
            ))
            .await?;
        Ok(Conn {
            client,
            settings: Vec::new(),
            prepared: HashMap::new(),
        })
    }

    fn record(&self, job: &ShadowJob, outcome: &Outcome) {
        let mut d = match outcome {
            Outcome::Mismatch(diff) => {
                let mut d = Divergence::new(Kind::ReadMismatch, job.table.clone());
                d.secondary = format!("{} rows", diff.secondary_rows);
                d.detail = diff.detail.clone();
                d
            }
            Outcome::Error(code) => {
                let mut d = Divergence::new(Kind::SecondaryError, job.table.clone());
                d.secondary = code.clone();
                d.detail = serde_json::json!({"shadow_read": true});
                d
            }
            Outcome::Timeout => {
                let mut d = Divergence::new(Kind::SecondaryError, job.table.clone());
                d.secondary = "timeout".into();
                d.detail = serde_json::json!({
                    "shadow_read": true,
                    "timeout_ms": self.opts.timeout.as_millis() as u64,
                });
                d
            }
            Outcome::Equal | Outcome::Lagging | Outcome::Dropped => return,
        };
        d.primary = format!("{} rows", job.primary.rows.len());
        d.query = job.query.clone();
        d.session = job.session;
        self.recorder.record(d);
    }
}

fn failed(e: &tokio_postgres::Error) -> RunError {
    match e.as_db_error() {
        Some(db) => RunError::Failed(db.code().code().to_string(), db.message().to_string()),
        None => RunError::Failed("connection".into(), e.to_string()),
    }
}

/// Pins the settings, prepares (once per connection) and runs the read; binary results.
async fn run_on(conn: &mut Conn, job: &ShadowJob) -> Result<ResultSet, tokio_postgres::Error> {
    if conn.settings != job.settings && !job.settings.is_empty() {
        let mut sql = String::from("SELECT ");
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for (i, (k, v)) in job.settings.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "set_config(${}, ${}, false)",
                2 * i + 1,
                2 * i + 2
            ));
            params.push(k);
            params.push(v);
        }
        conn.client.execute(sql.as_str(), &params).await?;
        conn.settings = job.settings.clone();
    }
    let to_fields = |columns: &[tokio_postgres::Column]| -> Vec<Field> {
        columns
            .iter()
            .map(|c| Field::new(c.name(), c.type_().oid(), 1))
            .collect()
    };
    let (fields, rows) = if job.params.is_empty() && !conn.prepared.contains_key(&job.sql) {
        // A read without parameters, as simple-protocol texts are (each with its own literals,
        // so seldom run twice): one round trip, without preparing it.
        let rows = conn.client.query_typed(&job.sql, &[]).await?;
        let fields = match rows.first() {
            Some(r) => to_fields(r.columns()),
            // No row to name the columns: ask for them.
            None => to_fields(conn.client.prepare(&job.sql).await?.columns()),
        };
        (fields, rows)
    } else {
        let statement = match conn.prepared.get(&job.sql) {
            Some(s) => s.clone(),
            None => {
                let types: Vec<Type> = job.params.iter().map(param_type).collect();
                let s = conn.client.prepare_typed(&job.sql, &types).await?;
                if conn.prepared.len() >= PREPARED_PER_CONN {
                    conn.prepared.clear();
                }
                conn.prepared.insert(job.sql.clone(), s.clone());
                s
            }
        };
        let params: Vec<&(dyn ToSql + Sync)> = job
            .params
            .iter()
            .map(|v| v as &(dyn ToSql + Sync))
            .collect();
        let rows = conn.client.query(&statement, &params).await?;
        (to_fields(statement.columns()), rows)
    };
    let rows = rows
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<_, Raw>(i).map(|Raw(b)| b))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ResultSet { fields, rows })
}

/// The parameter type a value is declared with: its own OID when built in (the same on every
/// server), else unknown, so the server infers it from the SQL.
fn param_type(v: &Value) -> Type {
    match v.type_oid {
        1..16384 => Type::from_oid(v.type_oid).unwrap_or(Type::UNKNOWN),
        _ => Type::UNKNOWN,
    }
}
