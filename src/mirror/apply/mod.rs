//! The applier: committed journal transactions to the secondary, in intent id order, exactly once.
//!
//! One task. It takes the consecutive intents whose outcome is known, skips the aborted ones,
//! and applies the committed ones through their rules ([`ApplyPlan`](crate::sql::ApplyPlan)) in
//! one secondary transaction that also records the position in `pgbridge.applied` (keyed by the
//! journal's uuid), so a restart resumes right after the last applied id. Consecutive
//! transactions with the same session settings share one secondary transaction (each stays
//! whole; the position is the last one's). Values are bound as the primary sent them: with their
//! type OID and wire format.
//!
//! Each applied write is compared with what it did on the primary ([`super::compare`]); a
//! difference is a `write_mismatch` record, written once the batch committed, and the apply
//! goes on.
//!
//! Connection and transient errors retry with exponential backoff forever. A permanent error
//! parks the transaction ([`super::parked`]), records a `secondary_error` divergence, and then,
//! by `[mirror] on_error`, halts (retrying slowly) or skips it.
//!
//! The parts: [`task`] (the loop: connect, take ready intents, retry, advance), [`batch`] (one
//! secondary transaction and the change dispatch), [`pipeline`] (its statements, prepared and
//! sent together), one file per change kind ([`upsert`], [`delete`], [`update_key`],
//! [`truncate`], [`statement`]), [`plan`] (the rules' live plans), [`park`], [`wire`] (values
//! on the wire, errors classified), [`chunk`] (backfill chunks on the ordered path), [`order`]
//! (each row's images in the primary's order across instances) and [`handle`] (what sessions
//! and the admin API hold).

mod batch;
mod chunk;
mod delete;
mod handle;
mod order;
mod park;
mod pipeline;
mod plan;
mod statement;
mod task;
mod truncate;
mod update_key;
mod upsert;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Statement;
use tracing::{info_span, Instrument};

use super::compare::WriteCheck;
use super::parked;
use super::status::MirrorStats;
use super::{Effect, Journal, Row};
use crate::config::{MirrorConfig, OnError};
use crate::divergence::{Divergence, Recorder};
use crate::rules::{RuleSet, TableName};
pub use chunk::{canonical, CanonicalKey, Chunk, ChunkOutcome, ChunkPort, Raw, Snapshot};
pub use handle::{ApplierHandle, WaitError};
use pipeline::Pending;
use plan::LivePlan;

/// How the applier runs (from `[mirror]` and `[secondary]`).
#[derive(Debug, Clone)]
pub struct ApplierConfig {
    pub secondary: crate::config::PgUrl,
    pub on_error: OnError,
    /// Journal transactions per secondary transaction, at most.
    pub batch: usize,
    /// First retry delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// With `on_error = "halt"`, how often the parked transaction is tried again.
    pub halt_retry: Duration,
    /// How long a batch that is not full waits for more transactions (`[mirror]
    /// apply_linger_ms`).
    pub linger: Duration,
    /// `[mirror] order_rows`: each row's images applied in the primary's order ([`order`]).
    pub order_rows: bool,
}

impl ApplierConfig {
    pub fn new(secondary: crate::config::PgUrl, mirror: &MirrorConfig) -> ApplierConfig {
        ApplierConfig {
            secondary,
            on_error: mirror.on_error,
            batch: 64,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(10),
            halt_retry: Duration::from_secs(5),
            linger: mirror.apply_linger(),
            order_rows: mirror.order_rows,
        }
    }
}

/// The applier task's state.
pub struct Applier {
    journal: Arc<Journal>,
    rules: Arc<ArcSwap<RuleSet>>,
    recorder: Arc<Recorder>,
    stats: Arc<MirrorStats>,
    cfg: ApplierConfig,
    applied: watch::Sender<u64>,
    plans: HashMap<TableName, LivePlan>,
    statements: HashMap<(String, Vec<u32>), Statement>,
    /// The id of a transaction already parked (halt mode retries it without parking again).
    parked_here: Option<u64>,
    /// Write comparisons' records of the batch being applied, written once it committed.
    pending: Vec<Divergence>,
    /// Statements of the batch not yet sent: they go out together, pipelined, instead of one
    /// round trip each.
    pipeline: Vec<Pending>,
    /// The index in the batch of the transaction being applied.
    txn: usize,
    /// The write comparison of each transaction of the batch, by index; the pipeline's answers
    /// are checked into it.
    checks: Vec<WriteCheck>,
    /// The primary's effect of the first of upserts of one row left out for the last one.
    carried: Option<Option<Effect>>,
    /// The session settings in force on the connection (set at session level by a committed
    /// batch); `None` when unknown (a new connection, a failed batch).
    settings: Option<Vec<(String, String)>>,
    /// Backfill chunks handed over, and the keys noted for them.
    chunks: chunk::ChunkInbox,
}

/// Why applying a batch failed.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    /// Retry the same batch after a backoff; `reconnect` when the connection is gone.
    #[error("{message}")]
    Transient { message: String, reconnect: bool },
    /// The secondary (or the mapping) refuses a transaction of the batch for good (boxed: the
    /// error path is rare, and a small error keeps every statement's `Result` small).
    #[error("{}", .0.message)]
    Permanent(Box<Refusal>),
}

/// A transaction the secondary (or the mapping) refuses for good, and what its report needs.
#[derive(Debug)]
struct Refusal {
    /// Its index in the batch.
    txn: usize,
    table: Option<TableName>,
    key: Option<Row>,
    sqlstate: Option<String>,
    message: String,
}

impl Applier {
    /// Starts the applier task (and a ticker that refreshes the metrics every second).
    pub fn spawn(
        journal: Arc<Journal>,
        rules: Arc<ArcSwap<RuleSet>>,
        recorder: Arc<Recorder>,
        cfg: ApplierConfig,
    ) -> ApplierHandle {
        let stats = Arc::new(MirrorStats::default());
        stats
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(parked::list(journal.dir()));
        let (applied, rx) = watch::channel(0);
        let (chunks, port) = chunk::channel(journal.clone(), stats.clone(), rx.clone());
        let applier = Applier {
            journal: journal.clone(),
            rules,
            recorder,
            stats: stats.clone(),
            cfg,
            applied,
            plans: HashMap::new(),
            statements: HashMap::new(),
            pipeline: Vec::new(),
            txn: 0,
            checks: Vec::new(),
            carried: None,
            settings: None,
            parked_here: None,
            pending: Vec::new(),
            chunks,
        };
        let task = tokio::spawn(applier.run().instrument(info_span!("applier")));
        let ticker = spawn_ticker(journal.clone(), stats.clone());
        ApplierHandle::new(journal, stats, rx, task, ticker, port)
    }

    /// A refusal of the transaction being applied, for a change of `table`.
    fn refused(&self, table: &TableName, key: Option<&Row>, reason: impl ToString) -> ApplyError {
        ApplyError::Permanent(Box::new(Refusal {
            txn: self.txn,
            table: Some(table.clone()),
            key: key.cloned(),
            sqlstate: None,
            message: reason.to_string(),
        }))
    }
}

/// Refreshes the mirror's metrics every second.
fn spawn_ticker(journal: Arc<Journal>, stats: Arc<MirrorStats>) -> JoinHandle<()> {
    let ticker = async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            stats.sample();
            stats.report(&journal);
        }
    };
    tokio::spawn(ticker.instrument(info_span!("mirror_ticker")))
}
