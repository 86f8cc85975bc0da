//! The client's requests, as the capture needs them sent.
//!
//! Every request frame of a session with rules passes through [`Driver::handle`], which pushes
//! the [`Expect`] that tells the other direction what the reply is for and queues the bytes for
//! the primary. Statements that write a migrated table go out with RETURNING spliced in. Where a
//! transaction ends in a commit with captured changes, the driver first makes the changes durable
//! (docs/DESIGN.md, principle 7): it waits until every earlier reply arrived, asks the primary for the
//! transaction id, appends the journal intent, and only then lets the COMMIT go. A statement that
//! would commit on its own (autocommit) is run inside a transaction pgbridge begins and commits.

mod copy;
mod extended;
mod inject;
mod journal;
mod lockstep;
mod route;
mod simple;
mod switched;

pub use switched::WriteRouting;

pub(in crate::capture) use route::Side;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::expect::{Expect, Step};
use super::track::ShapeCheck;
use super::Shared;
use crate::divergence::{normalize_query, Divergence, Kind as DivergenceKind, Recorder};
use crate::mirror::{Journal, Row};
use crate::protocol::wire;
use crate::sql::{Analysis, Analyzer, Kind, Mirror, Plan, SessionOp, StatementInfo};

/// What the driver waits for a held reply to go on with.
pub(in crate::capture) enum Pending {
    /// A COPY into a migrated table ([`copy`]).
    Copy(copy::PendingCopy),
    /// A read the secondary answered, its columns to be checked against the primary's
    /// description of the text: if they differ, the client's Query (`query`) goes to the
    /// primary after all.
    Shape {
        query: Bytes,
        table: String,
        text: String,
    },
}

impl<'a> Driver<'a> {
    /// Whether the driver waits for a held reply while the client streams or waits.
    pub fn continuation_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Resolves when the reply the driver waits for has arrived. Cancel safe.
    pub async fn continuation_ready(&self) {
        loop {
            let notified = self.shared.progress.notified();
            {
                let t = self.shared.lock();
                if t.held.is_some() || t.shape_checked.is_some() {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Waits for the held reply of what is pending and goes on with it, until nothing is.
    pub(super) async fn finish_pending<W: AsyncWrite + Unpin>(
        &mut self,
        primary: &mut W,
    ) -> std::io::Result<()> {
        while self.pending.is_some() {
            self.flush(primary).await?;
            self.continuation_ready().await;
            self.continue_pending().await?;
        }
        Ok(())
    }

    /// Goes on with what is pending, its held reply having arrived.
    pub async fn continue_pending(&mut self) -> std::io::Result<()> {
        let (held, checked) = {
            let mut t = self.shared.lock();
            (t.held.take(), t.shape_checked.take())
        };
        match self.pending.take() {
            Some(Pending::Copy(copy)) => match held {
                Some(status) => self.continue_copy(copy, status).await,
                None => {
                    self.pending = Some(Pending::Copy(copy));
                    Ok(())
                }
            },
            Some(Pending::Shape { query, table, text }) => {
                match checked {
                    Some(ShapeCheck::Differs) => self.unserved_read(&query, &table, &text),
                    Some(ShapeCheck::Same | ShapeCheck::Refused) => {}
                    None => self.pending = Some(Pending::Shape { query, table, text }),
                }
                Ok(())
            }
            None => Ok(()),
        }
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
    pub(in crate::capture) began: bool,
    /// Extended protocol: the open transaction's id was asked for.
    xid_asked: bool,
    /// Extended protocol: the request just before was the client's Describe of this portal (its
    /// RowDescription gives the captured columns' types to the Execute that follows).
    described_portal: Option<String>,
    /// What the driver still has to do once a held reply arrives.
    pub(in crate::capture) pending: Option<Pending>,
    /// This session's side of a percent ramp: a number from 0 to 99, drawn once, sticky for
    /// the session's life ([`crate::reads::Flags::source_for`]).
    bucket: u8,
    /// Read flags and shared tables, for shadow reads.
    pub(super) routing: Option<(&'a crate::reads::ReadFlags, &'a crate::reads::SharedTables)>,
    /// Reads served by the secondary ([`super::secondary`]).
    pub(super) serving: Option<super::secondary::Serving<'a>>,
    /// pgbridge's injected statements parsed in the current batch, not yet known to have
    /// succeeded (an error skips everything up to Sync). Those known to be prepared on the
    /// primary (their ParseComplete arrived) are the tracker's `injected`.
    injected_parsed: Vec<&'static str>,
    /// Prepared statements that are a COPY FROM STDIN.
    copy_statements: std::collections::HashSet<String>,
    /// An extended-protocol COPY FROM STDIN was executed and the client has not ended its
    /// data yet ([`Expect::Sync`]'s `in_copy`).
    pub(super) copy_in: bool,
    pub(super) out: BytesMut,
    /// The write switch ([`switched`]).
    writes: Option<WriteRouting>,
    /// Statements the client prepared that name a migrated table.
    prepared: HashMap<String, switched::Prepared>,
    /// The Parse being handled is pgbridge's own (a statement prepared again): its reply is
    /// kept from the client.
    hidden_parse: bool,
    /// The same for a Bind sent again.
    hidden_bind: bool,
    /// The client's last Bind of each portal whose statement names a migrated table.
    bound: HashMap<String, Bytes>,
    /// Prepared statements that write a table no rule migrates (src/writes/mixed.rs).
    other_writes: std::collections::HashSet<String>,
    /// Statements on switched tables whose target is on another server ([`lockstep`]).
    lockstep: Option<lockstep::Lockstep>,
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
            pending: None,
            bucket: rand::random_range(0..100),
            routing: None,
            serving: None,
            injected_parsed: Vec::new(),
            copy_statements: Default::default(),
            copy_in: false,
            out: BytesMut::new(),
            writes: None,
            prepared: HashMap::new(),
            hidden_parse: false,
            hidden_bind: false,
            bound: HashMap::new(),
            other_writes: Default::default(),
            lockstep: None,
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

    /// Bytes that need no decision (COPY data, Terminate, passwords) go out in order; a COPY
    /// into a migrated table keeps its data, in case it must run again.
    pub fn pass(&mut self, bytes: &[u8]) {
        if let Some(Pending::Copy(copy)) = &mut self.pending {
            copy.keep(bytes);
        }
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

    /// Queues replies pgbridge gives itself (the secondary's answer, a ReadyForQuery the
    /// primary does not send), written to the client in their turn; `ready`: a ReadyForQuery of
    /// the session's transaction status follows them.
    pub(in crate::capture) fn queue_served(&mut self, bytes: Bytes, ready: bool) {
        self.expect(Expect::Served { bytes, ready });
        self.shared.served.notify_one();
    }

    /// Handles one whole request frame from the client.
    pub async fn handle<W: AsyncWrite + Unpin>(
        &mut self,
        frame: &[u8],
        primary: &mut W,
    ) -> std::io::Result<()> {
        if self.pending.is_some() {
            // A request pipelined after a COPY (or a read whose columns are being checked)
            // waits until pgbridge is done with it, as it would have waited for its own end.
            self.finish_pending(primary).await?;
        }
        if self.lockstep(frame, primary).await? {
            return Ok(());
        }
        let redirected = self.redirect(frame).await;
        self.handle_frame(redirected.as_deref().unwrap_or(frame), primary)
            .await?;
        self.settle_prepared(primary).await
    }

    async fn handle_frame<W: AsyncWrite + Unpin>(
        &mut self,
        frame: &[u8],
        primary: &mut W,
    ) -> std::io::Result<()> {
        let described = self.described_portal.take();
        if self.serving.is_some() && self.serve_extended(frame).await {
            return Ok(());
        }
        match frame[0] {
            b'Q' => {
                self.copy_in = false;
                self.query(frame, primary).await
            }
            b'E' => {
                // A held Bind and Describe released by the serving side just now count too.
                let described = self.described_portal.take().or(described);
                self.execute(frame, described.as_deref(), primary).await
            }
            b'S' => {
                let done = self.sync(frame, primary).await;
                // What this batch parsed and did not confirm is parsed again next time.
                self.injected_parsed.clear();
                done
            }
            _ => {
                self.handle_unanswered(frame);
                Ok(())
            }
        }
    }

    /// The request frames that need no reply from the primary before going on.
    fn handle_unanswered(&mut self, frame: &[u8]) {
        match frame[0] {
            b'c' | b'f' => {
                self.copy_in = false;
                self.pass(frame);
            }
            b'P' => self.parse(frame),
            b'B' => self.bind(frame),
            b'D' => self.describe(frame),
            b'C' => self.close(frame),
            b'F' => {
                self.expect(Expect::Call);
                self.pass(frame);
            }
            _ => self.pass(frame),
        }
    }

    /// The client's Close of a statement or portal.
    fn close(&mut self, frame: &[u8]) {
        if let Some((kind, name)) = wire::target(frame) {
            match kind {
                b'S' => self.statements.remove(name),
                _ => self.portals.remove(name),
            };
        }
        self.expect(Expect::Close { forward: true });
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

    /// The steps that carry out a Query's statements.
    pub(super) fn steps(&self, analysis: &Analysis, text: &str) -> Vec<Step> {
        analysis
            .statements
            .iter()
            .map(|s| match &s.kind {
                Kind::Session(op) => session_step(op, text.get(s.text.clone()).unwrap_or(text)),
                _ => step_of(&s.plan),
            })
            .collect()
    }

    /// Records every statement of a client's text that writes a migrated table without being
    /// mirrored (once per Query or Parse).
    fn report_unmirrored_writes(&self, analysis: &Analysis) {
        for s in &analysis.statements {
            if let Some(reason) = s.plan.unmirrored() {
                self.report_unmirrored(s, analysis, reason.to_string());
            }
        }
    }

    fn report_unmirrored(&self, s: &StatementInfo, analysis: &Analysis, reason: String) {
        let table = analysis.unmirrored_table(s);
        let mut d = Divergence::new(DivergenceKind::UnmirroredWrite, table.clone());
        d.query = normalize_query(analysis.capture_sql.as_deref().unwrap_or_default());
        d.detail = serde_json::json!({ "reason": reason });
        d.session = Some(self.session);
        if s.kind != Kind::Ddl {
            // Every table it writes may differ now; the one recorded when none is named.
            let mut tables: Vec<String> = s.writes.iter().map(|w| w.table.to_string()).collect();
            if tables.is_empty() {
                tables.push(table.clone());
            }
            let mut tracker = self.shared.lock();
            for t in tables {
                tracker.stale.push((t, reason.clone()));
            }
        }
        tracing::warn!(session = self.session, reason = %d.detail, "a write to a migrated table is not mirrored");
        self.recorder.record(d);
    }
}

/// DDL on a migrated table changes what the primary describes: the descriptions every session
/// keeps are asked for again.
fn note_schema_change(analysis: &Analysis) {
    if analysis.statements.iter().any(|s| s.kind == Kind::Ddl) {
        crate::capture::schema_changed();
    }
}

/// The step of a one-statement analysis (a prepared statement's).
fn single_step(a: &Analysis) -> Step {
    a.single_plan().map_or(Step::Pass, step_of)
}

/// The step of a session statement: a `SET`, `RESET` or `DISCARD` the session's settings
/// follow once it completed (`text` is its own).
fn session_step(op: &SessionOp, text: &str) -> Step {
    match op {
        SessionOp::Set(_) | SessionOp::Reset(_) | SessionOp::Discard { .. } => Step::Set {
            op: op.clone(),
            text: Arc::from(text.trim()),
        },
        _ => Step::Pass,
    }
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
