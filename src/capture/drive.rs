//! The client's requests, as the capture needs them sent.
//!
//! Every request frame of a session with rules passes through [`Driver::handle`], which pushes
//! the [`Expect`] that tells the other direction what the reply is for and queues the bytes for
//! the primary. Statements that write a migrated table go out with RETURNING spliced in. Where a
//! transaction ends in a commit with captured changes, the driver first makes the changes durable
//! (DESIGN.md, principle 7): it waits until every earlier reply arrived, asks the primary for the
//! transaction id, appends the journal intent, and only then lets the COMMIT go. A statement that
//! would commit on its own (autocommit) is run inside a transaction pgbridge begins and commits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::track::{Expect, ShadowPlan, Step, Tracker};
use crate::divergence::{normalize_query, Divergence, Kind as DivergenceKind, Recorder};
use crate::mirror::{Journal, Row, TxnRecord, Value};
use crate::protocol::messages::{error_response, Severity};
use crate::protocol::wire;
use crate::sql::{injected, Analysis, Analyzer, Mirror, Plan, StatementInfo, TxControl};

/// The capture state of one session, shared by its two directions.
pub struct Shared {
    pub tracker: Mutex<Tracker>,
    /// Signalled by the reply side whenever a reply completed.
    pub progress: Notify,
    /// Signalled when replies the secondary gave were queued for the client.
    pub served: Notify,
}

impl Shared {
    pub fn new(journal: Option<Arc<Journal>>, sync: bool) -> Shared {
        Shared {
            tracker: Mutex::new(Tracker::new(journal, sync)),
            progress: Notify::new(),
            served: Notify::new(),
        }
    }

    /// Shadow reads go to `shadow`, recorded for session `session`.
    pub fn with_shadow(
        self,
        shadow: Option<Arc<crate::reads::shadow::Shadow>>,
        session: u64,
    ) -> Shared {
        {
            let mut t = self.lock();
            t.shadow = shadow;
            t.session = session;
        }
        self
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The SQLSTATE of a transaction pgbridge rolls back because the journal could not take it
/// (disk_full: the journal is full, or its disk).
const REFUSED: &str = "53100";

/// The message of such a rollback.
fn rolled_back(why: &str) -> String {
    format!("pgbridge rolled the transaction back: {why}")
}

/// Settings that text values depend on, carried with each journal transaction.
const TEXT_SETTINGS: [&str; 3] = ["DateStyle", "IntervalStyle", "TimeZone"];

/// The session's request side of the capture.
pub struct Driver<'a> {
    pub(super) shared: &'a Shared,
    pub(super) analyzer: &'a Analyzer,
    journal: Option<&'a Arc<Journal>>,
    pub(super) recorder: &'a Recorder,
    pub(super) session: u64,
    pub(super) statements: HashMap<String, Arc<Analysis>>,
    pub(super) portals: HashMap<String, Arc<Analysis>>,
    /// Declared parameter types of statements, and bound parameters of portals, for replays.
    param_types: HashMap<String, Vec<u32>>,
    portal_params: HashMap<String, Row>,
    /// The text of prepared reads and the statement each portal runs, for shadow reads.
    pub(super) texts: HashMap<String, Arc<str>>,
    portal_statements: HashMap<String, String>,
    /// Extended protocol: pgbridge began a transaction in this batch, to commit at its Sync.
    wrapped: bool,
    /// Extended protocol: the client began a transaction in this batch.
    began: bool,
    /// Extended protocol: the open transaction's id was asked for.
    xid_asked: bool,
    /// Extended protocol: the request just before was the client's Describe of this portal (its
    /// RowDescription gives the captured columns' types to the Execute that follows).
    described_portal: Option<String>,
    /// A COPY outside a transaction was sent; its held reply finishes it.
    pending_autocommit: bool,
    /// COPY temp tables made in this session.
    copies: u64,
    /// Read flags and shared tables, for shadow reads.
    pub(super) routing: Option<(&'a crate::reads::ReadFlags, &'a crate::reads::SharedTables)>,
    /// Reads served by the secondary ([`super::secondary`]).
    pub(super) serving: Option<super::secondary::Serving<'a>>,
    /// pgbridge's injected statements parsed in the current batch, not yet known to have
    /// succeeded (an error skips everything up to Sync). Those known to be prepared on the
    /// primary (their ParseComplete arrived) are the tracker's `injected`.
    injected_parsed: Vec<&'static str>,
    pub(super) out: BytesMut,
}

impl<'a> Driver<'a> {
    pub fn new(
        shared: &'a Shared,
        analyzer: &'a Analyzer,
        journal: Option<&'a Arc<Journal>>,
        recorder: &'a Recorder,
        session: u64,
    ) -> Driver<'a> {
        Driver {
            shared,
            analyzer,
            journal,
            recorder,
            session,
            statements: HashMap::new(),
            portals: HashMap::new(),
            param_types: HashMap::new(),
            portal_params: HashMap::new(),
            texts: HashMap::new(),
            portal_statements: HashMap::new(),
            wrapped: false,
            began: false,
            xid_asked: false,
            described_portal: None,
            pending_autocommit: false,
            copies: 0,
            routing: None,
            serving: None,
            injected_parsed: Vec::new(),
            out: BytesMut::new(),
        }
    }

    /// Reads of tables flagged `shadow` are compared on the secondary.
    pub fn with_routing(
        mut self,
        reads: &'a crate::reads::ReadFlags,
        shared: &'a crate::reads::SharedTables,
    ) -> Self {
        self.routing = Some((reads, shared));
        self
    }

    /// The step of a read that the flags say to shadow, if this one is.
    fn shadow_step(&self, analysis: &Analysis, text: &str) -> Option<Step> {
        self.shadow_plan(analysis, text, Vec::new())
    }

    pub(super) fn shadow_plan(
        &self,
        analysis: &Analysis,
        text: &str,
        params: Vec<Value>,
    ) -> Option<Step> {
        let (reads, shared) = self.routing?;
        let in_write_txn = !self.shared.lock().txn.is_empty();
        let flags = reads.load();
        match crate::reads::route(analysis, &flags, shared, in_write_txn) {
            crate::reads::Route::Shadow { sql, table } => {
                // Not sampled: served as any read, nothing kept.
                let shadow = self.shared.lock().shadow.clone()?;
                if !shadow.sampled() {
                    return None;
                }
                Some(Step::Shadow(Arc::new(ShadowPlan {
                    sql: sql.to_string(),
                    table: table.to_string(),
                    query: normalize_query(text),
                    after: self.journal.map(|j| j.last_id()),
                    params,
                    ordered: analysis.read_ordered(),
                })))
            }
            _ => None,
        }
    }

    /// Bytes that need no decision (COPY data, Terminate, passwords) go out in order.
    pub fn pass(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Writes what is queued for the primary.
    pub async fn flush<W: AsyncWrite + Unpin>(
        &mut self,
        primary: &mut W,
    ) -> std::io::Result<usize> {
        if self.out.is_empty() {
            return Ok(0);
        }
        let n = self.out.len();
        primary.write_all(&self.out).await?;
        primary.flush().await?;
        self.out.clear();
        Ok(n)
    }

    pub(super) fn expect(&mut self, e: Expect) {
        self.shared.lock().expect(e);
    }

    /// Handles one whole request frame from the client.
    pub async fn handle<W: AsyncWrite + Unpin>(
        &mut self,
        frame: &[u8],
        primary: &mut W,
    ) -> std::io::Result<()> {
        let described = self.described_portal.take();
        if self.serving.is_some() && self.serve_extended(frame).await {
            return Ok(());
        }
        match frame[0] {
            b'Q' => self.query(frame, primary).await,
            b'P' => {
                self.parse(frame);
                Ok(())
            }
            b'B' => {
                self.bind(frame);
                Ok(())
            }
            b'D' => {
                self.describe(frame);
                Ok(())
            }
            b'E' => {
                // A held Bind and Describe released by the serving side just now count too.
                let described = self.described_portal.take().or(described);
                self.execute(frame, described.as_deref(), primary).await
            }
            b'C' => {
                if let Some((kind, name)) = wire::target(frame) {
                    match kind {
                        b'S' => self.statements.remove(name),
                        _ => self.portals.remove(name),
                    };
                }
                self.expect(Expect::Close { forward: true });
                self.pass(frame);
                Ok(())
            }
            b'S' => {
                let done = self.sync(frame, primary).await;
                // What this batch parsed and did not confirm is parsed again next time.
                self.injected_parsed.clear();
                done
            }
            b'F' => {
                self.expect(Expect::Call);
                self.pass(frame);
                Ok(())
            }
            _ => {
                self.pass(frame);
                Ok(())
            }
        }
    }

    /// The client's Describe, of a statement or a portal.
    pub(super) fn describe(&mut self, frame: &[u8]) {
        let target = wire::target(frame);
        self.described_portal = match target {
            Some((b'P', name)) => Some(name.to_string()),
            _ => None,
        };
        let step = target
            .and_then(|(kind, name)| self.lookup(kind, name))
            .map_or(Step::Pass, |a| single_step(&a));
        self.expect(Expect::Describe {
            step,
            forward: true,
        });
        self.pass(frame);
    }

    fn lookup(&self, kind: u8, name: &str) -> Option<Arc<Analysis>> {
        match kind {
            b'S' => self.statements.get(name).cloned(),
            _ => self.portals.get(name).cloned(),
        }
    }

    /// Waits until every reply owed has arrived.
    async fn drain<W: AsyncWrite + Unpin>(&mut self, primary: &mut W) -> std::io::Result<()> {
        self.flush(primary).await?;
        loop {
            let notified = self.shared.progress.notified();
            if self.shared.lock().drained() {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Sends a Query whose ReadyForQuery is held, and waits for it; returns its status.
    async fn held_query<W: AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        steps: Vec<Step>,
        primary: &mut W,
    ) -> std::io::Result<u8> {
        self.expect(Expect::Query {
            steps: steps.into(),
            hold: true,
        });
        self.out.extend_from_slice(&wire::query(sql));
        self.drain(primary).await?;
        Ok(self.shared.lock().held.take().unwrap_or(b'E'))
    }

    /// The steps of a Query's statements; reports each write that is not mirrored.
    fn steps(&self, analysis: &Analysis) -> Vec<Step> {
        let mut steps = Vec::with_capacity(analysis.statements.len());
        for s in &analysis.statements {
            if let Some(reason) = s.plan.unmirrored() {
                self.report_unmirrored(s, analysis, reason.to_string());
            }
            steps.push(step_of(&s.plan));
        }
        steps
    }

    fn report_unmirrored(&self, s: &StatementInfo, analysis: &Analysis, reason: String) {
        let table = analysis.unmirrored_table(s);
        let mut d = Divergence::new(DivergenceKind::UnmirroredWrite, table);
        d.query = normalize_query(analysis.capture_sql.as_deref().unwrap_or_default());
        d.detail = serde_json::json!({ "reason": reason });
        d.session = Some(self.session);
        tracing::warn!(session = self.session, reason = %d.detail, "a write to a migrated table is not mirrored");
        self.recorder.record(d);
    }

    async fn query<W: AsyncWrite + Unpin>(
        &mut self,
        frame: &[u8],
        primary: &mut W,
    ) -> std::io::Result<()> {
        // A simple Query ends the unnamed statement and portal.
        self.statements.remove("");
        self.portals.remove("");
        let Some(text) = wire::query_text(frame) else {
            self.touch(None);
            self.expect(Expect::Query {
                steps: VecDeque::new(),
                hold: false,
            });
            self.pass(frame);
            return Ok(());
        };
        let analysis = self.analyzer.analyze(text);
        self.forget_injected(&analysis);
        self.touch(Some(&analysis));
        if analysis.is_unrelated() {
            self.expect(Expect::Query {
                steps: VecDeque::new(),
                hold: false,
            });
            self.pass(frame);
            return Ok(());
        }
        if let [s] = analysis.statements.as_slice() {
            if let Mirror::CopyFrom { table, name, .. } = &s.plan.mirror {
                let text = text.to_string();
                return self.copy(&text, name.clone(), table, primary).await;
            }
        }
        let plan = analysis.query_plan();
        let steps = self.steps(&analysis);
        let pending = !self.shared.lock().txn.is_empty();
        if let Some(k) = plan
            .commit_at
            .filter(|&k| pending || analysis.changes_before(k))
        {
            let start = analysis.statements[k].text.start;
            let text = text.to_string();
            return self.commit_split(&text, start, primary).await;
        }
        if plan.changes && !plan.begins && !plan.other_tx {
            self.drain(primary).await?;
            if self.shared.lock().status == b'I' {
                let sql = analysis.capture_sql.as_deref().unwrap_or(text).to_string();
                return self.autocommit(&sql, steps, plan.needs_xid, primary).await;
            }
        }
        let mut steps = steps;
        if self.serving.is_some() {
            self.follow_settings(&analysis, text);
            if !plan.changes {
                match self.serve_query(&analysis, text).await {
                    Ok(()) => return Ok(()),
                    Err(Some(d)) => steps = vec![Step::Fallback(Arc::new(d))],
                    Err(None) => {}
                }
            }
        }
        if !plan.changes {
            if let Some(step) = self.shadow_step(&analysis, text) {
                steps = vec![step];
            }
        }
        let bytes = match &analysis.capture_sql {
            // The transaction's id comes back with its first captured statement, in the same
            // message, so that the COMMIT needs no round trip of its own to learn it.
            Some(sql) if plan.needs_xid && self.shared.lock().xid.is_none() => {
                steps.push(Step::Xid);
                wire::query(&injected::with_xid(sql))
            }
            Some(sql) => wire::query(sql),
            None => Bytes::copy_from_slice(frame),
        };
        self.expect(Expect::Query {
            steps: steps.into(),
            hold: false,
        });
        self.out.extend_from_slice(&bytes);
        Ok(())
    }

    /// The Query's statements before `start` run first (their reply held), then the changes are
    /// journaled, then the rest, from the COMMIT on, is sent.
    async fn commit_split<W: AsyncWrite + Unpin>(
        &mut self,
        text: &str,
        start: usize,
        primary: &mut W,
    ) -> std::io::Result<()> {
        self.drain(primary).await?;
        let (before, rest) = text.split_at(start);
        if !before.trim().trim_matches(';').trim().is_empty() {
            let a = self.analyzer.analyze(before);
            let steps = self.steps(&a);
            let sql = a.capture_sql.as_deref().unwrap_or(before).to_string();
            self.held_query(&sql, steps, primary).await?;
        }
        let a = self.analyzer.analyze(rest);
        let mut steps = self.steps(&a);
        let sql = a.capture_sql.as_deref().unwrap_or(rest).to_string();
        match self.journal_open_transaction(primary).await? {
            Journaled::Nothing => {}
            Journaled::Intent(id) => {
                if let Some(first) = steps.first_mut() {
                    *first = Step::Commit { id, forward: true };
                }
            }
            Journaled::Refused(message) => return self.refuse_commit(&message),
        }
        self.expect(Expect::Query {
            steps: steps.into(),
            hold: false,
        });
        self.out.extend_from_slice(&wire::query(&sql));
        Ok(())
    }

    /// A Query that would commit on its own runs in a transaction pgbridge commits once the
    /// changes are journaled.
    async fn autocommit<W: AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        steps: Vec<Step>,
        needs_xid: bool,
        primary: &mut W,
    ) -> std::io::Result<()> {
        let mut all = vec![Step::Swallow];
        all.extend(steps);
        let wrapped = if needs_xid {
            all.push(Step::Xid);
            injected::in_transaction(&injected::with_xid(sql))
        } else {
            injected::in_transaction(sql)
        };
        let status = self.held_query(&wrapped, all, primary).await?;
        self.finish_autocommit(status).await
    }

    /// Whether an autocommit waits for its held reply while the client streams (COPY).
    pub fn continuation_pending(&self) -> bool {
        self.pending_autocommit
    }

    /// Resolves when the reply a pending autocommit waits for has arrived. Cancel safe.
    pub async fn continuation_ready(&self) {
        loop {
            let notified = self.shared.progress.notified();
            if self.shared.lock().held.is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Finishes a pending autocommit whose reply arrived.
    pub async fn continue_pending(&mut self) -> std::io::Result<()> {
        let held = self.shared.lock().held.take();
        match held {
            Some(status) => {
                self.pending_autocommit = false;
                self.finish_autocommit(status).await
            }
            None => Ok(()),
        }
    }

    /// The second half of an autocommit: journal and COMMIT, or ROLLBACK after an error.
    async fn finish_autocommit(&mut self, status: u8) -> std::io::Result<()> {
        let changed = !self.shared.lock().txn.is_empty();
        let (sql, step) = match status {
            b'T' if changed => match self.intent().await {
                Ok(id) => (injected::COMMIT, Step::Commit { id, forward: false }),
                Err(message) => return self.refuse_commit(&message),
            },
            // A write that changed no row leaves nothing to journal.
            b'T' => (injected::COMMIT, Step::Swallow),
            _ => (injected::ROLLBACK, Step::Swallow),
        };
        self.expect(Expect::Query {
            steps: VecDeque::from([step]),
            hold: false,
        });
        self.out.extend_from_slice(&wire::query(sql));
        Ok(())
    }

    /// COPY FROM into a migrated table: COPY has no RETURNING, so the rows go into a temporary
    /// copy of the table first and from there into the table with INSERT ... SELECT, whose
    /// RETURNING is captured. The client sees the replies of its COPY only; outside a
    /// transaction the whole runs in one pgbridge commits once the rows are journaled.
    async fn copy<W: AsyncWrite + Unpin>(
        &mut self,
        text: &str,
        table_at: std::ops::Range<usize>,
        table: &crate::rules::TableName,
        primary: &mut W,
    ) -> std::io::Result<()> {
        self.drain(primary).await?;
        self.copies += 1;
        let temp = injected::copy_temp(self.copies);
        let insert = injected::copy_insert(table, &temp);
        let analysis = self.analyzer.analyze(&insert);
        let (Some(capture_sql), Some(capture)) = (
            analysis.capture_sql.clone(),
            analysis.statements.first().and_then(|s| s.capture.clone()),
        ) else {
            let reason = "COPY into a migrated table cannot be captured".to_string();
            if let Some(s) = analysis.statements.first() {
                self.report_unmirrored(s, &analysis, reason);
            }
            self.expect(Expect::Query {
                steps: VecDeque::new(),
                hold: false,
            });
            self.out.extend_from_slice(&wire::query(text));
            return Ok(());
        };
        let mut sql = injected::copy_via_temp(text, table_at, table, &temp, &capture_sql);
        let mut steps = vec![Step::Swallow, Step::Pass, Step::HiddenCapture(capture)];
        let autocommit = self.shared.lock().status == b'I';
        if autocommit {
            sql = injected::in_transaction(&sql);
            steps.insert(0, Step::Swallow);
        }
        self.expect(Expect::Query {
            steps: steps.into(),
            hold: autocommit,
        });
        self.pending_autocommit = autocommit;
        self.out.extend_from_slice(&wire::query(&sql));
        Ok(())
    }

    /// The journal could not take the transaction: roll it back and tell the client.
    fn refuse_commit(&mut self, message: &str) -> std::io::Result<()> {
        let mut t = self.shared.lock();
        t.txn.clear();
        t.before_ready.push(error_response(
            Severity::Error,
            REFUSED,
            &rolled_back(message),
        ));
        t.expect(Expect::Query {
            steps: VecDeque::from([Step::Swallow]),
            hold: false,
        });
        drop(t);
        self.out.extend_from_slice(&wire::query(injected::ROLLBACK));
        Ok(())
    }

    /// For an open transaction with changes: its id from the primary, then the durable intent.
    async fn journal_open_transaction<W: AsyncWrite + Unpin>(
        &mut self,
        primary: &mut W,
    ) -> std::io::Result<Journaled> {
        let (status, empty) = {
            let t = self.shared.lock();
            (t.status, t.txn.is_empty())
        };
        if status != b'T' || empty {
            return Ok(Journaled::Nothing);
        }
        if self.shared.lock().xid.is_none() {
            self.held_query(injected::XID, vec![Step::Xid], primary)
                .await?;
        }
        Ok(match self.intent().await {
            Ok(id) => Journaled::Intent(id),
            Err(m) => Journaled::Refused(m),
        })
    }

    /// Appends the open transaction's changes to the journal (durably); its intent id.
    async fn intent(&mut self) -> Result<u64, String> {
        let record = {
            let mut t = self.shared.lock();
            let mut record = TxnRecord::new(self.session, t.xid.take());
            record.changes = t.txn.changes().to_vec();
            record.settings = TEXT_SETTINGS
                .iter()
                .filter_map(|k| t.settings.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
            record
        };
        let Some(journal) = self.journal else {
            // No secondary configured: nothing to mirror to.
            self.shared.lock().txn.clear();
            return Err("no [secondary] is configured to mirror to".into());
        };
        journal
            .append_intent(&record)
            .await
            .map_err(|e| e.to_string())
    }

    fn parse(&mut self, frame: &[u8]) {
        let Some((name, query, _)) = wire::parse_message(frame) else {
            self.pass(frame);
            return;
        };
        let name = name.to_string();
        let analysis = self.analyzer.analyze(query);
        self.forget_injected(&analysis);
        let bytes = if analysis.is_unrelated() {
            None
        } else {
            self.steps(&analysis);
            analysis
                .capture_sql
                .as_deref()
                .and_then(|sql| wire::replace_parse_query(frame, sql))
        };
        if !analysis.is_unrelated() {
            self.param_types
                .insert(name.clone(), wire::parse_param_types(frame));
            if analysis.read_rewrite().is_some() {
                self.texts.insert(name.clone(), Arc::from(query));
            }
        }
        self.statements.insert(name.clone(), analysis.clone());
        self.expect(Expect::Parse { forward: true });
        match bytes {
            Some(b) => self.out.extend_from_slice(&b),
            None => self.pass(frame),
        }
        if self.serving.is_some() {
            self.describe_for_serving(&name, query, frame, &analysis);
        }
    }

    pub(super) fn bind(&mut self, frame: &[u8]) {
        self.described_portal = None;
        let Some((portal, stmt)) = wire::bind_names(frame) else {
            self.pass(frame);
            return;
        };
        let analysis = self.statements.get(stmt).cloned();
        let portal = portal.to_string();
        let extra = analysis.as_ref().and_then(|a| match single_step(a) {
            Step::Capture(c) => Some(c.extra),
            _ => None,
        });
        let edited = extra.and_then(|n| wire::extend_bind_formats(frame, n).flatten());
        self.portal_params.remove(&portal);
        self.portal_statements
            .insert(portal.clone(), stmt.to_string());
        if let Some(types) = self.param_types.get(stmt) {
            if let Some(row) = wire::bind_params(frame).map(|ps| params_row(types, &ps)) {
                self.portal_params.insert(portal.clone(), row);
            }
        }
        match analysis {
            Some(a) => self.portals.insert(portal, a),
            None => self.portals.remove(&portal),
        };
        self.expect(Expect::Bind { forward: true });
        match edited {
            Some(b) => self.out.extend_from_slice(&b),
            None => self.pass(frame),
        }
    }

    /// `described`: the portal of the client's Describe sent just before this Execute.
    async fn execute<W: AsyncWrite + Unpin>(
        &mut self,
        frame: &[u8],
        described: Option<&str>,
        primary: &mut W,
    ) -> std::io::Result<()> {
        let analysis = wire::execute_portal(frame).and_then(|p| self.portals.get(p).cloned());
        if let Some(a) = &analysis {
            self.forget_injected(a);
        }
        let mut step = analysis.as_ref().map_or(Step::Pass, |a| single_step(a));
        if let Step::Statement { params, .. } = &mut step {
            if let Some(bound) = wire::execute_portal(frame).and_then(|p| self.portal_params.get(p))
            {
                *params = bound.clone();
            }
        }
        if let (Step::Pass, Some(a), Some(portal)) = (&step, &analysis, wire::execute_portal(frame))
        {
            if let Some(shadow) = self.portal_shadow(a, portal) {
                // The answer's types and formats, for the comparison.
                self.expect(Expect::Describe {
                    step: shadow.clone(),
                    forward: false,
                });
                self.out.extend_from_slice(&wire::describe_portal(portal));
                step = shadow;
            }
        }
        if let (Step::Pass, Some(d)) = (&step, self.take_fallback()) {
            step = Step::Fallback(Arc::new(d));
        }
        match &step {
            Step::Tx(TxControl::Begin) => self.began = true,
            // Changes may still be on their way (an Execute earlier in this batch).
            Step::Tx(TxControl::Commit) if self.xid_asked || !self.shared.lock().txn.is_empty() => {
                return self.execute_commit(frame, primary).await;
            }
            Step::Capture(_) | Step::Truncate(_) | Step::Statement { .. } => {
                if !self.began && !self.wrapped {
                    if self.settled_status().is_none() {
                        self.drain_extended(primary).await?;
                    }
                    if self.shared.lock().status == b'I' {
                        self.inject("pgbridge_begin", injected::BEGIN, Step::Swallow, false);
                        self.wrapped = true;
                    }
                }
                let portal = wire::execute_portal(frame);
                if let (Step::Capture(_), Some(p)) = (&step, portal) {
                    if described == Some(p) {
                        // The client's own Describe of this portal, answered just before the
                        // rows, gave the captured columns' types already.
                        return self.send_execute(frame, step);
                    }
                    // The types of the captured columns, for the journal.
                    self.expect(Expect::Describe {
                        step: step.clone(),
                        forward: false,
                    });
                    self.out.extend_from_slice(&wire::describe_portal(p));
                }
            }
            _ => {}
        }
        self.send_execute(frame, step)
    }

    /// Sends the client's Execute, and asks for the transaction's id behind its first change.
    fn send_execute(&mut self, frame: &[u8], step: Step) -> std::io::Result<()> {
        let changes = matches!(
            step,
            Step::Capture(_) | Step::Truncate(_) | Step::Statement { .. }
        );
        let returns_xid = matches!(step, Step::Capture(_));
        self.expect(Expect::Execute {
            step,
            forward: true,
        });
        self.pass(frame);
        if changes && !self.xid_asked {
            // A captured write's rows carry the transaction id; behind any other change it is
            // asked for, pipelined: no round trip of its own.
            if !returns_xid {
                self.inject("pgbridge_xid", injected::XID, Step::Xid, false);
            }
            self.xid_asked = true;
        }
        Ok(())
    }

    /// The shadow step of a portal running a prepared read flagged `shadow`.
    fn portal_shadow(&self, analysis: &Analysis, portal: &str) -> Option<Step> {
        self.routing?;
        let stmt = self.portal_statements.get(portal)?;
        let text = self.texts.get(stmt)?;
        let params = self
            .portal_params
            .get(portal)
            .map(|r| r.values.clone())
            .unwrap_or_default();
        // Bound beyond the rules' `where`: the secondary cannot give the same answer.
        let hold = analysis.read_params_hold(|n| params.get(n.checked_sub(1)?)?.bytes.as_deref());
        if !hold {
            return None;
        }
        self.shadow_plan(analysis, text, params)
    }

    /// Mid-batch, the server holds its replies until Sync or Flush: ask it to send them.
    async fn drain_extended<W: AsyncWrite + Unpin>(
        &mut self,
        primary: &mut W,
    ) -> std::io::Result<()> {
        if self.shared.lock().drained() {
            // Nothing owed: what is queued can wait for the client's next Sync or Flush.
            return Ok(());
        }
        self.out.extend_from_slice(&wire::flush());
        self.drain(primary).await
    }

    /// The session's transaction status as it is now, when no reply owed can change it (only
    /// Parse, Bind, Describe and Close are owed, none of which ends or begins a transaction or
    /// brings changes), and no error arrived since the last ReadyForQuery.
    fn settled_status(&self) -> Option<u8> {
        let t = self.shared.lock();
        (t.settled() && !t.batch_error).then_some(t.status)
    }

    /// DISCARD and DEALLOCATE drop prepared statements, pgbridge's too (any of them, to be safe):
    /// parse them again before their next use.
    fn forget_injected(&mut self, analysis: &Analysis) {
        if analysis.drops_prepared() {
            self.injected_parsed.clear();
            self.shared.lock().forget_injected();
        }
    }

    /// Runs `sql` as pgbridge's own named statement and portal, leaving the client's unnamed
    /// statement and portal alone. A statement prepared before is only bound and executed;
    /// otherwise it is closed (a failed DISCARD may have left it) and parsed first.
    fn inject(&mut self, name: &'static str, sql: &str, step: Step, forward: bool) {
        let (parse, epoch) = {
            let t = self.shared.lock();
            (!t.injected.contains(&name), t.injected_epoch)
        };
        // Parsed earlier in this batch: its Parse is not known to have succeeded, parse again.
        if parse && !self.injected_parsed.contains(&name) {
            self.injected_parsed.push(name);
        }
        let parsed = parse.then_some(Expect::InjectedParse { name, epoch });
        self.send_injected(name, parse.then_some(sql), parsed, step, forward);
    }

    /// Runs `sql` as pgbridge's named statement `name`, parsed anew.
    fn inject_once(&mut self, name: &str, sql: &str, step: Step, forward: bool) {
        self.send_injected(name, Some(sql), None, step, forward);
    }

    /// Closes pgbridge's portal, parses `sql` as `name` when given (closing `name` first),
    /// binds the portal to `name` and executes it. `parsed`: what the Parse's reply is expected
    /// as, when not as an ordinary Parse.
    fn send_injected(
        &mut self,
        name: &str,
        sql: Option<&str>,
        parsed: Option<Expect>,
        step: Step,
        forward: bool,
    ) {
        let mut expects = vec![Expect::Close { forward }];
        let mut frames = vec![wire::close(b'P', "pgbridge_p")];
        if let Some(sql) = sql {
            expects.extend([
                Expect::Close { forward },
                parsed.unwrap_or(Expect::Parse { forward }),
            ]);
            frames.extend([wire::close(b'S', name), wire::parse(name, sql)]);
        }
        expects.extend([Expect::Bind { forward }, Expect::Execute { step, forward }]);
        frames.extend([wire::bind("pgbridge_p", name), wire::execute("pgbridge_p")]);
        for e in expects {
            self.expect(e);
        }
        for bytes in frames {
            self.out.extend_from_slice(&bytes);
        }
    }

    /// The id and intent of the open transaction, in the extended protocol.
    async fn extended_intent<W: AsyncWrite + Unpin>(
        &mut self,
        primary: &mut W,
    ) -> std::io::Result<Result<u64, String>> {
        self.xid_asked = false;
        if self.shared.lock().xid.is_none() {
            self.inject("pgbridge_xid", injected::XID, Step::Xid, false);
            self.drain_extended(primary).await?;
        }
        Ok(self.intent().await)
    }

    async fn execute_commit<W: AsyncWrite + Unpin>(
        &mut self,
        frame: &[u8],
        primary: &mut W,
    ) -> std::io::Result<()> {
        // Every change and the transaction's id arrived already, and nothing owed can fail the
        // transaction before this COMMIT but the client's Bind (whose error would skip the
        // COMMIT, and journal the intent's outcome as a rollback): no round trip needed.
        let settled = self.settled_status() == Some(b'T') && self.shared.lock().xid.is_some();
        if !settled {
            self.drain_extended(primary).await?;
        }
        let (failed, empty) = {
            let t = self.shared.lock();
            (t.batch_error, t.txn.is_empty())
        };
        let step = if failed || empty {
            self.xid_asked = false;
            Step::Tx(TxControl::Commit)
        } else {
            match self.extended_intent(primary).await? {
                Ok(id) => Step::Commit { id, forward: true },
                Err(message) => {
                    // The COMMIT fails in its place, with pgbridge's reason, and rolls back.
                    let raise = injected::raise(REFUSED, &rolled_back(&message));
                    self.shared.lock().txn.clear();
                    self.inject_once("pgbridge_refuse", &raise, Step::Pass, true);
                    return Ok(());
                }
            }
        };
        self.expect(Expect::Execute {
            step,
            forward: true,
        });
        self.pass(frame);
        Ok(())
    }

    async fn sync<W: AsyncWrite + Unpin>(
        &mut self,
        frame: &[u8],
        primary: &mut W,
    ) -> std::io::Result<()> {
        self.began = false;
        if !std::mem::take(&mut self.wrapped) {
            self.expect(Expect::Sync { hold: false });
            self.pass(frame);
            return Ok(());
        }
        self.drain_extended(primary).await?;
        let failed = self.shared.lock().batch_error;
        if !failed {
            match self.extended_intent(primary).await? {
                Ok(id) => self.inject(
                    "pgbridge_commit",
                    injected::COMMIT,
                    Step::Commit { id, forward: false },
                    false,
                ),
                Err(message) => {
                    self.shared.lock().before_ready.push(error_response(
                        Severity::Error,
                        REFUSED,
                        &rolled_back(&message),
                    ));
                    self.inject(
                        "pgbridge_rollback",
                        injected::ROLLBACK,
                        Step::Swallow,
                        false,
                    );
                }
            }
            self.expect(Expect::Sync { hold: false });
            self.pass(frame);
            return Ok(());
        }
        // The batch failed inside pgbridge's transaction: end it as the implicit one would.
        self.expect(Expect::Sync { hold: true });
        self.pass(frame);
        self.drain(primary).await?;
        let status = self.shared.lock().held.take();
        self.shared.lock().txn.clear();
        self.expect(Expect::Query {
            steps: VecDeque::from([Step::Swallow]),
            hold: false,
        });
        // Idle: the batch failed before pgbridge's BEGIN ran, there is nothing to roll back
        // (a ROLLBACK would warn); an empty query gives the client its ReadyForQuery.
        let sql = if status == Some(b'I') {
            injected::NOTHING
        } else {
            injected::ROLLBACK
        };
        self.out.extend_from_slice(&wire::query(sql));
        Ok(())
    }
}

/// Bound parameters as a replayable row: the declared type (0 when the client left it to the
/// server) and the client's format.
fn params_row(types: &[u32], params: &[wire::Param<'_>]) -> Row {
    let mut row = Row::new();
    for (i, (format, value)) in params.iter().enumerate() {
        row = row.with(
            "",
            Value {
                type_oid: types.get(i).copied().unwrap_or(0),
                format: *format as u8,
                bytes: value.map(Bytes::copy_from_slice),
            },
        );
    }
    row
}

enum Journaled {
    Nothing,
    Intent(u64),
    Refused(String),
}

/// The step of a one-statement analysis (a prepared statement's).
fn single_step(a: &Analysis) -> Step {
    a.single_plan().map_or(Step::Pass, step_of)
}

/// The step that carries out a statement's plan.
fn step_of(plan: &Plan) -> Step {
    match (&plan.mirror, &plan.tx) {
        (Mirror::Rows(c), _) => Step::Capture(c.clone()),
        (Mirror::Replay { table, sql }, _) => Step::Statement {
            table: table.clone(),
            sql: sql.clone(),
            params: Row::new(),
        },
        (Mirror::Truncate(table), _) => Step::Truncate(table.clone()),
        (_, Some(tc)) => Step::Tx(tc.clone()),
        _ => Step::Pass,
    }
}
