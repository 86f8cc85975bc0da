//! Shadow reads: a read the primary served runs again, rewritten, on the secondary, and the two
//! answers are compared ([`crate::divergence::compare`]). A difference is a `read_mismatch`
//! record; an error on the secondary a `secondary_error` with its SQLSTATE (`timeout` when it
//! took longer than `[shadow] timeout_ms`, `connection` when the secondary could not be reached).
//!
//! Shadow reads are optional work and never delay the client (docs/DESIGN.md, principle 8):
//! the session asks for a [`Ticket`] first ([`Shadow::ticket`], which samples at `[shadow]
//! sample` and admits at most `max_concurrency + queue` reads at once without waiting),
//! collects the primary's result only when it got one, and hands the job over with
//! [`Ticket::submit`]. A read that is not admitted is dropped and counted, unlike a mirror
//! write.
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
//!
//! This file is the executor: the options, the job, admission and sampling, the background
//! task (in a `shadow_read` span). [`run`] runs one job and records its outcome, on a
//! connection of [`conn`].

mod conn;
mod run;
pub mod window;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::ShadowConfig;
use crate::divergence::compare::{Difference, ResultSet};
use crate::divergence::Recorder;
use crate::mirror::Value;
use crate::rules::RuleSet;
use conn::Conn;

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
    pub secondary: crate::config::PgUrl,
}

impl ShadowOptions {
    pub fn new(c: &ShadowConfig, secondary: &crate::config::PgUrl) -> ShadowOptions {
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
    /// A simple Query's read (no `params`) with its literals as parameters, when its shape
    /// binds: prepared once per connection and bound, and `sql` run as text when the secondary
    /// will not prepare it.
    pub bound: Option<crate::sql::BoundRead>,
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
    /// Connections to the secondary not in use.
    idle: Mutex<Vec<Conn>>,
}

/// A reserved place for one shadow read; dropping it unused frees the place.
pub struct Ticket {
    permit: OwnedSemaphorePermit,
    inner: Arc<Inner>,
}

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
        let span = tracing::info_span!("shadow_read", table = %job.table, session = job.session);
        let read = async move {
            let Ticket { permit, inner } = self;
            let outcome = inner.run(&job).await;
            count(&job.table, &outcome);
            inner.record(&job, &outcome);
            drop(permit);
            outcome
        };
        tokio::spawn(read.instrument(span))
    }
}

fn count(table: &str, outcome: &Outcome) {
    metrics::counter!("pgbridge_shadow_reads_total",
        "table" => table.to_string(), "result" => outcome.label())
    .increment(1);
    match outcome {
        Outcome::Equal => window::record(table, false),
        Outcome::Mismatch(_) => window::record(table, true),
        _ => {}
    }
}
