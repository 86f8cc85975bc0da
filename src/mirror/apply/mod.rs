//! The applier: committed journal transactions to the secondary, in intent id order, exactly once.
//!
//! One task. It takes the consecutive intents whose outcome is known, skips the aborted ones,
//! and applies the committed ones through their rules ([`ApplyPlan`]) in one secondary
//! transaction that also records the position in `pgbridge.applied` (keyed by the journal's
//! uuid), so a restart resumes right after the last applied id. Consecutive transactions with the
//! same session settings share one secondary transaction (each stays whole; the position is the
//! last one's). Values are bound as the primary sent them: with their type OID and wire format.
//!
//! Each applied write is compared with what it did on the primary ([`super::compare`]); a
//! difference is a `write_mismatch` record, written once the batch committed, and the apply
//! goes on.
//!
//! Connection and transient errors retry with exponential backoff forever. A permanent error
//! parks the transaction ([`super::parked`]), records a `secondary_error` divergence, and then,
//! by `[mirror] on_error`, halts (retrying slowly) or skips it.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};
use tracing::{debug, error, info, warn};

use super::compare::{key_detail, Verb, WriteCheck};
use super::parked::{self, ParkedInfo};
use super::status::{MirrorReport, MirrorStats};
use super::{Change, ChangeOp, Effect, Journal, Row, TxnRecord, Value};
use crate::config::{MirrorConfig, OnError};
use crate::divergence::{record::rfc3339, Divergence, Kind, Recorder};
use crate::rules::{quote_ident, Rule, RuleSet, TableName};
use crate::sql::ApplyPlan;

const SCHEMA_SQL: &str = "CREATE SCHEMA IF NOT EXISTS pgbridge; \
    CREATE TABLE IF NOT EXISTS pgbridge.applied (journal text PRIMARY KEY, id bigint NOT NULL, \
    applied_at timestamptz NOT NULL DEFAULT now())";
const POSITION_SQL: &str = "INSERT INTO pgbridge.applied (journal, id, applied_at) \
    VALUES ($1, $2, now()) ON CONFLICT (journal) DO UPDATE SET id = EXCLUDED.id, applied_at = EXCLUDED.applied_at";
/// Below this OID a type is built in, with the same OID on every server.
const FIRST_NORMAL_OID: u32 = 16384;

/// How the applier runs (from `[mirror]` and `[secondary]`).
#[derive(Debug, Clone)]
pub struct ApplierConfig {
    pub secondary: tokio_postgres::Config,
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
}

impl ApplierConfig {
    pub fn new(secondary: tokio_postgres::Config, mirror: &MirrorConfig) -> ApplierConfig {
        ApplierConfig {
            secondary,
            on_error: mirror.on_error,
            batch: 64,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(10),
            halt_retry: Duration::from_secs(5),
            linger: mirror.apply_linger(),
        }
    }
}

/// Why a sync-mode wait ended without the transaction applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("the secondary has not applied the transaction in time")]
    Timeout,
    #[error("the secondary refused the transaction; it is parked")]
    Parked,
    #[error("the applier has stopped")]
    Stopped,
}

/// The running applier, as the session and the admin API see it.
pub struct ApplierHandle {
    journal: Arc<Journal>,
    stats: Arc<MirrorStats>,
    applied: watch::Receiver<u64>,
    task: JoinHandle<()>,
    ticker: JoinHandle<()>,
}

impl ApplierHandle {
    /// Sync mode: waits until the secondary applied intent `id` (or gave up on it).
    /// Cancel safe.
    pub async fn wait_applied(&self, id: u64, timeout: Duration) -> Result<(), WaitError> {
        let mut rx = self.applied.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|&applied| applied >= id).await.map(|_| ())
        })
        .await;
        match waited {
            Err(_) => Err(WaitError::Timeout),
            Ok(Err(_)) => Err(WaitError::Stopped),
            Ok(Ok(_)) => {
                let parked = self
                    .stats
                    .parked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&id);
                if parked {
                    Err(WaitError::Parked)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The last id applied (or skipped).
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// A receiver of the applied id, for whoever prefers to wait on it directly.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    pub fn stats(&self) -> &Arc<MirrorStats> {
        &self.stats
    }

    /// The status figures now.
    pub fn report(&self) -> MirrorReport {
        self.stats.report(&self.journal)
    }

    /// Stops the applier task (a transaction in flight is rolled back by the secondary).
    pub fn stop(&self) {
        self.task.abort();
        self.ticker.abort();
    }
}

impl Drop for ApplierHandle {
    fn drop(&mut self) {
        self.stop();
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
}

/// One statement of a batch waiting in the pipeline, with what an error report needs.
struct Pending {
    stmt: Statement,
    values: Vec<Value>,
    txn: usize,
    /// `None` for the batch's own statements (BEGIN, settings, position, COMMIT).
    table: Option<TableName>,
    key: Option<Row>,
    answer: Answer,
}

/// What a queued statement's answer is checked for (the write comparison).
enum Answer {
    Unchecked,
    /// The statement should find its row (a delete of a row the primary had).
    Found {
        verb: Verb,
        key: Row,
    },
    /// An upsert (`RETURNING (xmax = 0)`): did it insert, as the primary's `verb` says?
    Upsert {
        verb: Verb,
        key: Row,
    },
    /// A replayed statement: its row count against the primary's tag.
    Statement {
        sql: String,
        tag: String,
        filtered: bool,
    },
}

impl Answer {
    /// Checks answer `n` (rows affected; for an upsert, 1 when it inserted).
    fn check(&self, check: &mut WriteCheck, table: &TableName, n: u64) {
        match self {
            Answer::Unchecked => {}
            Answer::Found { verb, key } => check.row(table, *verb, n > 0, key),
            Answer::Upsert { verb, key } => {
                check.row(table, *verb, (n == 1) == (*verb == Verb::Insert), key)
            }
            Answer::Statement { sql, tag, filtered } => {
                check.statement(table, sql, tag, n, *filtered)
            }
        }
    }
}

/// At most this many statements are in flight at once. Order matters (a key written twice in a
/// batch): tokio-postgres sends a request when its future is first polled, and futures-util's
/// `join_all` polls up to 30 futures in order (above that it switches to `FuturesOrdered`,
/// whose first polls are not promised in order), so keep this at 30 or below.
const PIPELINE_DEPTH: usize = 30;

/// A live rule and its plan.
type LivePlan = (Arc<Rule>, Arc<RulePlan>);

/// One row to upsert (or, outside the rule's `where`, to delete).
#[derive(Clone, Copy)]
struct Upsert<'a> {
    rule: &'a Rule,
    plan: &'a RulePlan,
    table: &'a TableName,
    row: &'a Row,
    in_filter: Option<bool>,
    /// What the primary did to the row, when the comparison can tell.
    expect: Option<Verb>,
}

/// A rule's apply statements, plus the filter check when the rule has a `where`.
#[derive(Debug)]
struct RulePlan {
    plan: ApplyPlan,
    filter: Option<String>,
    /// [`Rule::membership_follows_key`]: an UPDATE's row must already be on the target.
    follows_key: bool,
}

/// Why applying a batch failed.
#[derive(Debug)]
enum ApplyError {
    /// Retry the same batch after a backoff; `reconnect` when the connection is gone.
    Transient { message: String, reconnect: bool },
    /// The secondary (or the mapping) refuses transaction `txn` of the batch for good.
    Permanent {
        txn: usize,
        table: Option<TableName>,
        key: Option<Row>,
        sqlstate: Option<String>,
        message: String,
    },
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
        {
            let mut p = stats.parked.lock().unwrap_or_else(|e| e.into_inner());
            p.extend(parked::list(journal.dir()));
        }
        let (applied, rx) = watch::channel(0);
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
        };
        let task = tokio::spawn(applier.run());
        let ticker = {
            let (journal, stats) = (journal.clone(), stats.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    stats.sample();
                    stats.report(&journal);
                }
            })
        };
        ApplierHandle {
            journal,
            stats,
            applied: rx,
            task,
            ticker,
        }
    }

    async fn run(mut self) {
        let mut backoff = self.cfg.min_backoff;
        loop {
            let client = match self.connect().await {
                Ok(c) => c,
                Err(e) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    self.retry_later(&mut backoff, format!("cannot reach the secondary: {e}"))
                        .await;
                    continue;
                }
            };
            self.stats.connected.store(true, Ordering::Relaxed);
            self.statements.clear();
            self.settings = None;
            match self.apply_loop(&client, &mut backoff).await {
                Ok(()) => return,
                Err(message) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    self.retry_later(&mut backoff, message).await;
                }
            }
        }
    }

    async fn retry_later(&self, backoff: &mut Duration, message: String) {
        warn!(error = %message, retry_in = ?*backoff, "mirror applier retrying");
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pgbridge_mirror_retries_total").increment(1);
        self.stats.set_error(Some(message));
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(self.cfg.max_backoff);
    }

    /// Connects, makes sure the position table exists, and reads the position.
    async fn connect(&mut self) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = self.cfg.secondary.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "secondary connection ended");
            }
        });
        client.batch_execute(SCHEMA_SQL).await?;
        let row = client
            .query_opt(
                "SELECT id FROM pgbridge.applied WHERE journal = $1",
                &[&self.journal.uuid()],
            )
            .await?;
        let pos = row.map_or(0, |r| r.get::<_, i64>(0) as u64);
        let pos = pos.max(*self.applied.borrow());
        info!(journal = %self.journal.uuid(), position = pos, "mirror applier connected to the secondary");
        self.advance(pos);
        Ok(client)
    }

    fn advance(&self, pos: u64) {
        self.journal.set_applied(pos);
        self.stats.applied_seq.store(pos, Ordering::Relaxed);
        self.applied.send_if_modified(|v| {
            let changed = *v < pos;
            *v = (*v).max(pos);
            changed
        });
    }

    /// Applies until the connection fails (`Err` with the reason).
    async fn apply_loop(&mut self, client: &Client, backoff: &mut Duration) -> Result<(), String> {
        let mut changes = self.journal.subscribe();
        let mut limit = self.cfg.batch;
        loop {
            changes.borrow_and_update();
            let pos = *self.applied.borrow();
            let mut ready = self.journal.ready_batch(pos, limit);
            if ready.is_empty() {
                // Nothing ready: wait for an intent or outcome (or a second, to stay alive).
                let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
                continue;
            }
            if ready.len() < limit && !self.cfg.linger.is_zero() {
                // Let more commits join this batch: a secondary transaction per journal
                // transaction costs both sides several times what one per batch does.
                let until = tokio::time::Instant::now() + self.cfg.linger;
                while ready.len() < limit
                    && matches!(
                        tokio::time::timeout_at(until, changes.changed()).await,
                        Ok(Ok(()))
                    )
                {
                    changes.borrow_and_update();
                    ready = self.journal.ready_batch(pos, limit);
                }
            }
            // Aborted intents ahead are skipped without a secondary transaction.
            let skip = ready.iter().take_while(|r| !r.committed).count();
            if skip > 0 {
                self.advance(ready[skip - 1].id);
                continue;
            }
            let mut txns = Vec::with_capacity(ready.len());
            for r in &ready {
                if !r.committed {
                    txns.push((r.id, None));
                    continue;
                }
                match self.journal.read(r.id) {
                    Ok(t) => {
                        // One settings context per secondary transaction.
                        let same = txns
                            .iter()
                            .filter_map(|(_, t): &(u64, Option<TxnRecord>)| t.as_ref())
                            .next()
                            .is_none_or(|first| first.settings == t.settings);
                        if !same {
                            break;
                        }
                        txns.push((r.id, Some(t)));
                    }
                    Err(e) => {
                        if txns.is_empty() {
                            error!(id = r.id, error = %e, "unreadable journal intent");
                            self.park_unreadable(client, r.id, &e.to_string()).await?;
                        }
                        break;
                    }
                }
            }
            if txns.is_empty() {
                continue;
            }
            match self.apply_batch(client, &txns).await {
                Ok(()) => {
                    let last = txns.last().map_or(pos, |(id, _)| *id);
                    let applied = txns.iter().filter(|(_, t)| t.is_some()).count() as u64;
                    self.stats
                        .applied_txns
                        .fetch_add(applied, Ordering::Relaxed);
                    metrics::counter!("pgbridge_mirror_applied_total").increment(applied);
                    if let Some(id) = self.parked_here.take() {
                        // A halted transaction went through after all.
                        parked::unpark(self.journal.dir(), id);
                        self.stats
                            .parked
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                        self.stats.halted.store(false, Ordering::Relaxed);
                        info!(id, "parked transaction applied; the mirror resumes");
                    }
                    self.advance(last);
                    self.stats.set_error(None);
                    *backoff = self.cfg.min_backoff;
                    limit = self.cfg.batch;
                }
                Err(ApplyError::Transient { message, reconnect }) => {
                    if reconnect {
                        return Err(message);
                    }
                    self.retry_later(backoff, message).await;
                }
                Err(ApplyError::Permanent {
                    txn,
                    table,
                    key,
                    sqlstate,
                    message,
                }) => {
                    if txn > 0 {
                        // Apply the ones before it first, then it alone.
                        limit = txn;
                        continue;
                    }
                    let (id, record) = &txns[0];
                    let session = record.as_ref().map(|t| t.session);
                    self.park(client, *id, session, table, key, sqlstate, message)
                        .await?;
                    limit = self.cfg.batch;
                }
            }
        }
    }

    /// Parks transaction `id` and, by config, skips it or halts at it.
    #[allow(clippy::too_many_arguments)]
    async fn park(
        &mut self,
        client: &Client,
        id: u64,
        session: Option<u64>,
        table: Option<TableName>,
        key: Option<Row>,
        sqlstate: Option<String>,
        message: String,
    ) -> Result<(), String> {
        if self.parked_here != Some(id) {
            error!(id, table = ?table.as_ref().map(|t| t.to_string()), sqlstate = ?sqlstate, error = %message,
                "the secondary refused a mirrored transaction: parked");
            let info = ParkedInfo {
                id,
                ts: rfc3339(std::time::SystemTime::now()),
                reason: message.clone(),
                table: table.as_ref().map(|t| t.to_string()),
                sqlstate: sqlstate.clone(),
            };
            match self.journal.raw(id) {
                Ok(raw) => {
                    if let Err(e) = parked::park(self.journal.dir(), &raw, &info) {
                        error!(id, error = %e, "cannot keep the parked transaction");
                    }
                }
                Err(e) => error!(id, error = %e, "cannot read the transaction to park"),
            }
            self.stats
                .parked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id);
            metrics::counter!("pgbridge_mirror_parked_total").increment(1);
            let mut d = Divergence::new(
                Kind::SecondaryError,
                table.as_ref().map_or(String::new(), |t| t.to_string()),
            );
            d.primary = "committed".into();
            d.secondary = sqlstate.clone().unwrap_or_else(|| "error".into());
            d.session = session;
            d.detail = serde_json::json!({
                "journal_id": id,
                "key": key.as_ref().map(|k| key_detail(k, self.recorder.redact())),
                "error": message,
                "action": match self.cfg.on_error { OnError::Halt => "halted", OnError::Skip => "skipped" },
            });
            self.recorder.record(d);
            self.stats.set_error(Some(message));
        }
        match self.cfg.on_error {
            OnError::Skip => {
                client
                    .execute(POSITION_SQL, &[&self.journal.uuid(), &(id as i64)])
                    .await
                    .map_err(|e| format!("cannot record the position: {e}"))?;
                self.parked_here = None;
                self.advance(id);
            }
            OnError::Halt => {
                self.parked_here = Some(id);
                self.stats.halted.store(true, Ordering::Relaxed);
                tokio::time::sleep(self.cfg.halt_retry).await;
            }
        }
        Ok(())
    }

    async fn park_unreadable(
        &mut self,
        client: &Client,
        id: u64,
        message: &str,
    ) -> Result<(), String> {
        self.park(client, id, None, None, None, None, message.to_string())
            .await
    }

    /// Applies a batch of whole transactions in one secondary transaction with the position.
    ///
    /// BEGIN, the settings, the changes, the position and COMMIT all go through the pipeline:
    /// a batch without a `where` check costs one round trip. Answers are taken in order and the
    /// first error is the cause, so a COMMIT that ran after a failed statement (and rolled back)
    /// is never taken for a commit.
    async fn apply_batch(
        &mut self,
        client: &Client,
        txns: &[(u64, Option<TxnRecord>)],
    ) -> Result<(), ApplyError> {
        self.pending.clear();
        self.pipeline.clear();
        self.checks.clear();
        self.carried = None;
        let settings = txns
            .iter()
            .find_map(|(_, t)| t.as_ref())
            .map(|t| t.settings.clone());
        let result = self.apply_in_txn(client, txns, settings.as_deref()).await;
        match result {
            Ok(()) => {
                if let Some(settings) = settings {
                    self.settings = Some(settings);
                }
                for d in self.pending.drain(..) {
                    self.recorder.record(d);
                }
                Ok(())
            }
            Err(e) => {
                self.pipeline.clear();
                // Settings set in the failed transaction are undone with it.
                self.settings = None;
                let _ = client.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    }

    async fn apply_in_txn(
        &mut self,
        client: &Client,
        txns: &[(u64, Option<TxnRecord>)],
        settings: Option<&[(String, String)]>,
    ) -> Result<(), ApplyError> {
        self.txn = 0;
        self.control(client, "BEGIN", &[]).await?;
        if let Some(settings) = settings {
            if self.settings.as_deref() != Some(settings) {
                // At session level, so the next batches with the same settings skip this.
                self.control(client, "RESET ALL", &[]).await?;
                if !settings.is_empty() {
                    let mut sql = String::from("SELECT ");
                    let mut values = Vec::with_capacity(settings.len() * 2);
                    for (i, (k, v)) in settings.iter().enumerate() {
                        if i > 0 {
                            sql.push_str(", ");
                        }
                        sql.push_str(&format!(
                            "set_config(${}, ${}, false)",
                            2 * i + 1,
                            2 * i + 2
                        ));
                        values.push(Value::text(Type::TEXT.oid(), k));
                        values.push(Value::text(Type::TEXT.oid(), v));
                    }
                    let refs: Vec<&Value> = values.iter().collect();
                    self.control(client, &sql, &refs).await?;
                }
            }
        }
        let mut last = 0;
        for (i, (id, txn)) in txns.iter().enumerate() {
            last = *id;
            self.txn = i;
            self.checks.push(WriteCheck::new(
                *id,
                txn.as_ref().map_or(0, |t| t.session),
                self.recorder.redact(),
            ));
            let Some(txn) = txn else { continue };
            for (k, change) in txn.changes.iter().enumerate() {
                if self.superseded(change, txn.changes.get(k + 1)) {
                    // What the primary did first is what the row's one upsert must match.
                    if let ChangeOp::Upsert { effect, .. } = &change.op {
                        self.carried.get_or_insert(*effect);
                    }
                    continue;
                }
                // Errors name their transaction (a queued statement's may be an earlier one's).
                self.apply_change(client, &change.table, &change.op).await?;
            }
        }
        // An error at COMMIT (a deferred constraint) names the batch's last transaction, so the
        // batch shrinks until the one that fails is alone.
        let journal = Value::text(Type::TEXT.oid(), self.journal.uuid());
        let position = Value::text(Type::INT8.oid(), &last.to_string());
        self.control(client, POSITION_SQL, &[&journal, &position])
            .await?;
        self.control(client, "COMMIT", &[]).await?;
        self.flush(client).await?;
        for check in self.checks.drain(..) {
            self.pending.extend(check.divergences());
        }
        Ok(())
    }

    /// Queues one of the batch's own statements (transaction control, settings, position).
    async fn control(
        &mut self,
        client: &Client,
        sql: &str,
        values: &[&Value],
    ) -> Result<(), ApplyError> {
        let stmt = self
            .prepare(client, sql, values)
            .await
            .map_err(|e| classify(&e, self.txn, None, None))?;
        self.pipeline.push(Pending {
            stmt,
            values: values.iter().map(|v| (*v).clone()).collect(),
            txn: self.txn,
            table: None,
            key: None,
            answer: Answer::Unchecked,
        });
        Ok(())
    }

    /// An upsert whose row the transaction's next change upserts again (same table, same key):
    /// the next one alone decides the target row (its image is whole, and the batch is one
    /// secondary transaction), so the first need not run. An upsert then update of one row is
    /// the commonest transaction of all.
    fn superseded(&self, change: &Change, next: Option<&Change>) -> bool {
        let (ChangeOp::Upsert { row, .. }, Some(next)) = (&change.op, next) else {
            return false;
        };
        let ChangeOp::Upsert { row: next_row, .. } = &next.op else {
            return false;
        };
        if next.table != change.table {
            return false;
        }
        let rules = self.rules.load();
        let Some(rule) = rules.get(&change.table) else {
            return false;
        };
        matches!(
            (key_values(rule, row), key_values(rule, next_row)),
            (Ok(a), Ok(b)) if a == b
        )
    }

    async fn apply_change(
        &mut self,
        client: &Client,
        table: &TableName,
        op: &ChangeOp,
    ) -> Result<(), ApplyError> {
        let txn = self.txn;
        let permanent = |message: String, key: Option<&Row>| ApplyError::Permanent {
            txn,
            table: Some(table.clone()),
            key: key.cloned(),
            sqlstate: None,
            message,
        };
        if let ChangeOp::Statement { sql, params, tag } = op {
            let live = self.rules.load();
            let Some(rule) = live
                .get(table)
                .filter(|r| r.mirror == crate::rules::MirrorMode::Statements)
            else {
                debug!(table = %table, "no statement-mode rule for the table any more: skipped");
                return Ok(());
            };
            let filtered = rule.filter.is_some();
            // An untyped parameter is left for the secondary to infer, as the primary did.
            let values: Vec<Value> = params
                .values
                .iter()
                .map(|v| Value {
                    type_oid: if v.type_oid == 0 {
                        Type::UNKNOWN.oid()
                    } else {
                        v.type_oid
                    },
                    ..v.clone()
                })
                .collect();
            let refs: Vec<&Value> = values.iter().collect();
            let answer = match tag {
                Some(tag) => Answer::Statement {
                    sql: sql.clone(),
                    tag: tag.clone(),
                    filtered,
                },
                None => Answer::Unchecked,
            };
            return self.exec(client, sql, &refs, table, None, answer).await;
        }
        let Some((rule, plan)) = self.plan(table).map_err(|m| permanent(m, None))? else {
            debug!(table = %table, "no mirrored rule for the table any more: change skipped");
            return Ok(());
        };
        match op {
            // Handled above, before the row plan.
            ChangeOp::Statement { .. } => Ok(()),
            ChangeOp::Truncate => {
                self.exec(
                    client,
                    &plan.plan.truncate,
                    &[],
                    table,
                    None,
                    Answer::Unchecked,
                )
                .await
            }
            ChangeOp::Delete { key, in_filter } => {
                if *in_filter == Some(false) {
                    return Ok(());
                }
                let values = key_values(&rule, key).map_err(|m| permanent(m, Some(key)))?;
                // A row the primary deleted inside the migration was the target's.
                let answer = if *in_filter == Some(true) || rule.filter.is_none() {
                    Answer::Found {
                        verb: Verb::Delete,
                        key: key.clone(),
                    }
                } else {
                    Answer::Unchecked
                };
                self.exec(client, &plan.plan.delete, &values, table, Some(key), answer)
                    .await
            }
            ChangeOp::Upsert {
                row,
                in_filter,
                effect,
            } => {
                let effect = self.carried.take().unwrap_or(*effect);
                let expect = match effect {
                    Some(Effect::Inserted) => Some(Verb::Insert),
                    // Unless the `where` follows the key, an UPDATE may bring a row in.
                    Some(Effect::Updated) if plan.follows_key => Some(Verb::Update),
                    _ => None,
                };
                let upsert = Upsert {
                    rule: &rule,
                    plan: &plan,
                    table,
                    row,
                    in_filter: *in_filter,
                    expect,
                };
                self.upsert(client, &upsert).await
            }
            ChangeOp::UpdateKey {
                old_key,
                row,
                in_filter,
            } => {
                let values = key_values(&rule, old_key).map_err(|m| permanent(m, Some(old_key)))?;
                // Without a `where` every source row is the target's: the old one was there.
                let answer = if rule.filter.is_none() {
                    Answer::Found {
                        verb: Verb::Update,
                        key: old_key.clone(),
                    }
                } else {
                    Answer::Unchecked
                };
                self.exec(
                    client,
                    &plan.plan.delete,
                    &values,
                    table,
                    Some(old_key),
                    answer,
                )
                .await?;
                let upsert = Upsert {
                    rule: &rule,
                    plan: &plan,
                    table,
                    row,
                    in_filter: *in_filter,
                    expect: None,
                };
                self.upsert(client, &upsert).await
            }
        }
    }

    /// Upserts a row that matches the rule's `where`; deletes the key of one that does not.
    async fn upsert(&mut self, client: &Client, u: &Upsert<'_>) -> Result<(), ApplyError> {
        let Upsert {
            rule,
            plan,
            table,
            row,
            in_filter,
            expect,
        } = *u;
        let txn = self.txn;
        let permanent = |message: String| ApplyError::Permanent {
            txn,
            table: Some(table.clone()),
            key: Some(row.clone()),
            sqlstate: None,
            message,
        };
        let values = row_values(rule, row).map_err(permanent)?;
        let matches = match (in_filter, &plan.filter) {
            (Some(m), _) => m,
            (None, None) => true,
            (None, Some(sql)) => {
                // The answer decides what comes next: what is queued goes first.
                self.flush(client).await?;
                let stmt = self
                    .prepare(client, sql, &values)
                    .await
                    .map_err(|e| classify(&e, self.txn, Some(table), Some(row)))?;
                let r = client
                    .query_one(&stmt, &params(&values))
                    .await
                    .map_err(|e| classify(&e, self.txn, Some(table), Some(row)))?;
                r.get::<_, Option<bool>>(0).unwrap_or(false)
            }
        };
        if matches {
            let answer = match expect {
                Some(verb) => Answer::Upsert {
                    verb,
                    key: key_row(rule, row),
                },
                None => Answer::Unchecked,
            };
            self.exec(client, &plan.plan.upsert, &values, table, Some(row), answer)
                .await
        } else {
            let key = key_values(rule, row).map_err(permanent)?;
            self.exec(
                client,
                &plan.plan.delete,
                &key,
                table,
                Some(row),
                Answer::Unchecked,
            )
            .await
        }
    }

    /// Queues one statement, its answer to be checked for `answer` (see [`Applier::flush`]).
    async fn exec(
        &mut self,
        client: &Client,
        sql: &str,
        values: &[&Value],
        table: &TableName,
        key: Option<&Row>,
        answer: Answer,
    ) -> Result<(), ApplyError> {
        let stmt = self
            .prepare(client, sql, values)
            .await
            .map_err(|e| classify(&e, self.txn, Some(table), key))?;
        self.pipeline.push(Pending {
            stmt,
            values: values.iter().map(|v| (*v).clone()).collect(),
            txn: self.txn,
            table: Some(table.clone()),
            key: key.cloned(),
            answer,
        });
        Ok(())
    }

    /// Sends the queued statements, pipelined, and waits for their answers, which go to their
    /// transaction's write comparison. The first error in order is the cause (the ones after it
    /// fail because the transaction is aborted).
    async fn flush(&mut self, client: &Client) -> Result<(), ApplyError> {
        let pending = std::mem::take(&mut self.pipeline);
        for chunk in pending.chunks(PIPELINE_DEPTH) {
            let results = futures_util::future::join_all(chunk.iter().map(|p| async move {
                let values: Vec<&Value> = p.values.iter().collect();
                match p.answer {
                    // `DO NOTHING` returns no row when the target had it.
                    Answer::Upsert { .. } => {
                        client.query(&p.stmt, &params(&values)).await.map(|rows| {
                            u64::from(
                                rows.iter()
                                    .any(|r| r.get::<_, Option<bool>>(0) == Some(true)),
                            )
                        })
                    }
                    _ => client.execute(&p.stmt, &params(&values)).await,
                }
            }))
            .await;
            for (p, r) in chunk.iter().zip(results) {
                let n = r.map_err(|e| classify(&e, p.txn, p.table.as_ref(), p.key.as_ref()))?;
                if let (Some(check), Some(table)) = (self.checks.get_mut(p.txn), &p.table) {
                    p.answer.check(check, table, n);
                }
            }
        }
        Ok(())
    }

    /// A prepared statement with the values' parameter types, cached per connection.
    async fn prepare(
        &mut self,
        client: &Client,
        sql: &str,
        values: &[&Value],
    ) -> Result<Statement, tokio_postgres::Error> {
        let oids: Vec<u32> = values.iter().map(|v| param_oid(v)).collect();
        let key = (sql.to_string(), oids);
        if let Some(s) = self.statements.get(&key) {
            return Ok(s.clone());
        }
        let types: Vec<Type> = key
            .1
            .iter()
            .map(|&o| Type::from_oid(o).unwrap_or(Type::TEXT))
            .collect();
        let stmt = client.prepare_typed(sql, &types).await?;
        if self.statements.len() > 1000 {
            self.statements.clear();
        }
        self.statements.insert(key, stmt.clone());
        Ok(stmt)
    }

    /// The live rule of a source table and its plan (rebuilt when the rule was reloaded).
    /// `None` when no rule mirrors the table any more.
    fn plan(&mut self, table: &TableName) -> Result<Option<LivePlan>, String> {
        let rules = self.rules.load();
        let Some(rule) = rules.get(table) else {
            return Ok(None);
        };
        if rule.mirror == crate::rules::MirrorMode::Off {
            return Ok(None);
        }
        if let Some((r, p)) = self.plans.get(table) {
            if Arc::ptr_eq(r, rule) {
                return Ok(Some((r.clone(), p.clone())));
            }
        }
        let plan = ApplyPlan::for_rule(rule)?;
        let filter = filter_sql(rule)?;
        let follows_key = rule.membership_follows_key();
        let entry = (
            rule.clone(),
            Arc::new(RulePlan {
                plan,
                filter,
                follows_key,
            }),
        );
        self.plans.insert(table.clone(), entry.clone());
        Ok(Some(entry))
    }
}

/// `SELECT (where) FROM (SELECT $1::text::type AS col, ...)`: the rule's `where` on a row image.
fn filter_sql(rule: &Rule) -> Result<Option<String>, String> {
    let Some(filter) = &rule.filter else {
        return Ok(None);
    };
    let cols = rule
        .source_columns
        .as_ref()
        .ok_or("the source's columns are unknown: rules were not checked online")?;
    let items: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "${}::text::{} AS {}",
                i + 1,
                c.type_name,
                quote_ident(&c.name)
            )
        })
        .collect();
    Ok(Some(format!(
        "SELECT ({filter}) FROM (SELECT {}) AS pgbridge_v",
        items.join(", ")
    )))
}

/// The row's values in the source's column order (the upsert's `$1..$n`).
fn row_values<'a>(rule: &Rule, row: &'a Row) -> Result<Vec<&'a Value>, String> {
    let cols = rule
        .source_columns
        .as_ref()
        .ok_or("the source's columns are unknown: rules were not checked online")?;
    cols.iter()
        .map(|c| {
            row.get(&c.name)
                .ok_or_else(|| format!("the row image has no column `{}`", c.name))
        })
        .collect()
}

/// The key's values in rule key order (the delete's `$1..$k`).
fn key_values<'a>(rule: &Rule, row: &'a Row) -> Result<Vec<&'a Value>, String> {
    rule.key
        .iter()
        .map(|k| {
            row.get(k)
                .ok_or_else(|| format!("the row image has no key column `{k}`"))
        })
        .collect()
}

/// The key columns of a row image (rule key order), for records.
fn key_row(rule: &Rule, row: &Row) -> Row {
    rule.key
        .iter()
        .filter_map(|k| row.get(k).map(|v| (k, v)))
        .fold(Row::new(), |r, (k, v)| r.with(k, v.clone()))
}

/// The parameter type a value is declared with: its own OID when built in (the same on every
/// server), else text (a text value is parsed by the SQL's cast; a binary enum is its label).
fn param_oid(v: &Value) -> u32 {
    if v.type_oid != 0 && v.type_oid < FIRST_NORMAL_OID && Type::from_oid(v.type_oid).is_some() {
        v.type_oid
    } else {
        Type::TEXT.oid()
    }
}

fn params<'a>(values: &'a [&'a Value]) -> Vec<&'a (dyn ToSql + Sync)> {
    values.iter().map(|v| *v as &(dyn ToSql + Sync)).collect()
}

impl ToSql for Value {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.bytes {
            None => Ok(IsNull::Yes),
            Some(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        if self.format == 1 {
            Format::Binary
        } else {
            Format::Text
        }
    }

    to_sql_checked!();
}

/// Transient (retry) or permanent (park) by SQLSTATE; no SQLSTATE is a connection problem.
fn classify(
    e: &tokio_postgres::Error,
    txn: usize,
    table: Option<&TableName>,
    key: Option<&Row>,
) -> ApplyError {
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match e.source() {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    };
    let Some(code) = e.code() else {
        return ApplyError::Transient {
            message,
            reconnect: true,
        };
    };
    let c = code.code();
    let permanent = ["22", "23", "42", "2B", "2F", "44", "P0", "0A", "XX"]
        .iter()
        .any(|class| c.starts_with(class));
    if permanent {
        ApplyError::Permanent {
            txn,
            table: table.cloned(),
            key: key.cloned(),
            sqlstate: Some(c.to_string()),
            message,
        }
    } else {
        let reconnect = e.is_closed()
            || c.starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW;
        ApplyError::Transient { message, reconnect }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_types_are_declared_as_text() {
        assert_eq!(param_oid(&Value::text(1700, "1.5")), 1700);
        assert_eq!(param_oid(&Value::text(99999, "x")), 25);
        assert_eq!(param_oid(&Value::null(0)), 25);
    }
}
