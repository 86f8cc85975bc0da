//! The primary's replies, matched to the requests that asked for them.
//!
//! The client-to-primary direction pushes an [`Expect`] for every request it sends; this side
//! pops them as replies complete. Every reply of a client request reaches the client unchanged,
//! except the rows of a captured write (their trailing capture columns stripped, or all of them
//! dropped when the client wrote no RETURNING), and the replies to requests pgbridge injected
//! (BEGIN, `pg_current_xact_id()`, COMMIT), which the client never sees.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::rows;
use super::txn::TxnBuffer;
use crate::divergence::compare::{Field, ResultSet};
use crate::mirror::{Change, ChangeOp, Journal, Row};
use crate::protocol::wire::{self, FieldInfo};
use crate::reads::shadow::{Shadow, ShadowJob};
use crate::reads::MAX_COMPARED_BYTES;

/// Reported settings a shadow read pins on the secondary, so both sides format values alike.
const SHADOW_SETTINGS: [&str; 3] = ["DateStyle", "IntervalStyle", "TimeZone"];
use crate::rules::TableName;
use crate::sql::{Capture, TxControl};

/// What the results of one statement get.
#[derive(Debug, Clone)]
pub enum Step {
    /// The client's, untouched.
    Pass,
    /// pgbridge's own: the client sees none of it.
    Swallow,
    /// A captured write: its rows become changes of the open transaction.
    Capture(Arc<Capture>),
    /// pgbridge's own captured write (the INSERT ... SELECT behind a COPY): captured, never shown.
    HiddenCapture(Arc<Capture>),
    /// TRUNCATE of a migrated table.
    Truncate(TableName),
    /// A write of a `mirror = "statements"` table, rewritten to the target, with its parameters.
    Statement {
        table: TableName,
        sql: Arc<str>,
        params: Row,
    },
    /// pgbridge's `SELECT pg_current_xact_id()`.
    Xid,
    /// The client's transaction control, followed in the buffer when it succeeds.
    Tx(TxControl),
    /// A COMMIT whose journal intent is `id`: its outcome goes to the journal.
    Commit { id: u64, forward: bool },
    /// A read of a table flagged `shadow`: the client's answer is also kept, and compared with
    /// the secondary's once complete.
    Shadow(Arc<ShadowPlan>),
    /// A read the secondary failed with an error, served by the primary: the record is kept
    /// only when the primary answers it without error.
    Fallback(Arc<crate::divergence::Divergence>),
}

/// What a shadow read runs on the secondary, and what it is recorded as.
#[derive(Debug)]
pub struct ShadowPlan {
    pub sql: String,
    pub table: String,
    pub query: String,
    /// The journal position the secondary must have applied first.
    pub after: Option<u64>,
    /// The client's bound parameters (extended protocol).
    pub params: Vec<crate::mirror::Value>,
    /// The read orders its rows.
    pub ordered: bool,
}

/// A request sent to the primary, awaiting its reply.
#[derive(Debug)]
pub enum Expect {
    /// A Query: one step per statement; `hold` keeps its ReadyForQuery from the client.
    Query {
        steps: VecDeque<Step>,
        hold: bool,
    },
    Parse {
        forward: bool,
    },
    /// The Parse of pgbridge's injected statement `name` (never forwarded): once it succeeded
    /// the statement is prepared, unless DISCARD or DEALLOCATE was sent since (`epoch`).
    InjectedParse {
        name: &'static str,
        epoch: u64,
    },
    Bind {
        forward: bool,
    },
    Describe {
        step: Step,
        forward: bool,
    },
    Execute {
        step: Step,
        forward: bool,
    },
    Close {
        forward: bool,
    },
    Sync {
        hold: bool,
    },
    /// FunctionCall, and anything else answered by one ReadyForQuery.
    Call,
    /// pgbridge's Describe of the client's statement `name` (parsed just before), for reads
    /// the secondary may serve: the primary's parameter types and row description are kept.
    /// `key` is the statement's text and declared types, for statements parsed again alike.
    DescribeStatement {
        name: String,
        key: String,
        params: Vec<u32>,
    },
    /// A simple-protocol read served by the secondary whose row description the primary gives:
    /// pgbridge's Parse, Describe and Sync of the text. `answer` (the secondary's rows and tag)
    /// follows the primary's row description to the client, before the primary's ReadyForQuery.
    ShapeDescribe {
        shape: String,
        answer: Bytes,
        row: Option<Bytes>,
        failed: bool,
    },
    /// Replies the secondary gave, written to the client in their turn; `ready` ends them with
    /// a ReadyForQuery of the session's transaction status (pgbridge answered the Sync).
    Served {
        bytes: Bytes,
        ready: bool,
    },
}

/// What the primary said of a prepared statement: its parameters' types, and its row
/// description (`None`: the statement returns no rows).
#[derive(Debug, Clone)]
pub struct Described {
    pub params: Vec<u32>,
    pub row: Option<Bytes>,
}

/// What to do with one reply frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Forward,
    Drop,
    Replace(Bytes),
    /// Forward, once the applier has applied journal transaction `id` (sync mode).
    ForwardWhenApplied(u64),
}

/// The session's capture state, shared by its two directions.
#[derive(Default)]
pub struct Tracker {
    queue: VecDeque<Expect>,
    /// Types and formats of the current result's columns.
    fields: Vec<FieldInfo>,
    /// Changes of the statement in progress.
    pending: Vec<Change>,
    pub txn: TxnBuffer,
    /// The value of the last `pg_current_xact_id()`.
    pub xid: Option<i64>,
    /// The status of a held ReadyForQuery, for the side that asked to hold it.
    pub held: Option<u8>,
    /// The transaction status of the last ReadyForQuery.
    pub status: u8,
    /// An ErrorResponse arrived since the last Sync.
    pub batch_error: bool,
    /// An extended-protocol request failed and its batch's Sync is not sent yet: the server
    /// skips what is sent until then.
    skipping: bool,
    /// The server's reported settings (ParameterStatus).
    pub settings: BTreeMap<String, String>,
    /// Messages for the client, written before the next ReadyForQuery it gets.
    pub before_ready: Vec<Bytes>,
    /// The journal intent whose COMMIT completed last, for sync mode.
    committed: Option<u64>,
    /// Changes lost because the transaction ended without pgbridge's COMMIT (for a divergence).
    pub lost: usize,
    pub journal: Option<Arc<Journal>>,
    pub sync: bool,
    /// Divergences for the reply side to record.
    pub records: Vec<crate::divergence::Divergence>,
    /// The shadow executor, and the answer of the shadowed read in progress.
    pub shadow: Option<Arc<Shadow>>,
    shadow_result: Option<ResultSet>,
    /// The size of the rows kept in `shadow_result`.
    shadow_bytes: usize,
    pub session: u64,
    /// The open transaction may have written something (reads in it stay on the primary).
    pub touched: bool,
    /// The journal id of the session's last committed mirrored transaction (read-your-writes).
    pub last_commit: Option<u64>,
    /// The primary's descriptions of the client's prepared statements.
    pub described: std::collections::HashMap<String, Described>,
    /// The same, by statement text and declared parameter types.
    pub described_texts: std::collections::HashMap<String, Described>,
    /// The primary's row descriptions of simple-protocol reads, by query shape.
    pub shapes: std::collections::HashMap<String, Option<Bytes>>,
    /// pgbridge's injected statements prepared on the primary (their Parse succeeded).
    pub injected: Vec<&'static str>,
    /// Counts the client's DISCARDs and DEALLOCATEs: a Parse sent before one of them prepared
    /// nothing that lasts.
    pub injected_epoch: u64,
}

/// Query shapes whose row descriptions a session keeps.
const SHAPES_KEPT: usize = 1024;

impl Tracker {
    pub fn new(journal: Option<Arc<Journal>>, sync: bool) -> Tracker {
        Tracker {
            journal,
            sync,
            status: b'I',
            ..Default::default()
        }
    }

    pub fn expect(&mut self, e: Expect) {
        match e {
            Expect::Sync { .. } => self.skipping = false,
            // The server skips every message up to Sync after an error: no reply will come.
            Expect::Served { .. } => {}
            _ if self.skipping => return,
            _ => {}
        }
        self.queue.push_back(e);
    }

    /// No reply is owed.
    pub fn drained(&self) -> bool {
        self.queue.is_empty()
    }

    /// The replies owed (if any) cannot change the transaction status or bring changes: they
    /// are Parse, Bind, Describe and Close replies only.
    pub fn settled(&self) -> bool {
        self.queue.iter().all(|e| {
            matches!(
                e,
                Expect::Parse { .. }
                    | Expect::InjectedParse { .. }
                    | Expect::Bind { .. }
                    | Expect::Describe { .. }
                    | Expect::Close { .. }
            )
        })
    }

    /// The client's DISCARD or DEALLOCATE was sent: pgbridge's statements are parsed again.
    pub fn forget_injected(&mut self) {
        self.injected.clear();
        self.injected_epoch += 1;
    }

    /// The step the next result rows belong to.
    fn step(&self) -> Option<&Step> {
        match self.queue.front()? {
            Expect::Query { steps, .. } => Some(steps.front().unwrap_or(&Step::Pass)),
            Expect::Describe { step, .. } | Expect::Execute { step, .. } => Some(step),
            _ => None,
        }
    }

    /// Whether a reply frame of type `tag` must be looked at (decided before its body arrives).
    pub fn wants(&self, tag: u8) -> bool {
        match tag {
            b'D' => !matches!(
                self.step(),
                None | Some(Step::Pass | Step::Tx(_) | Step::Fallback(_))
            ),
            b'T' | b'C' | b'I' | b'E' | b'Z' | b'1' | b'2' | b'3' | b't' | b'n' | b's' | b'S' => {
                true
            }
            _ => false,
        }
    }

    /// Handles one whole reply frame.
    pub fn on_frame(&mut self, frame: &[u8]) -> Action {
        if let Some(action) = self.on_describe_frame(frame) {
            return action;
        }
        match frame[0] {
            b'S' => {
                if let Some((name, at)) = wire::cstr(frame, 5) {
                    if let Some((value, _)) = wire::cstr(frame, at) {
                        self.settings.insert(name.to_string(), value.to_string());
                    }
                }
                Action::Forward
            }
            b'T' => self.on_row_description(frame),
            b'D' => self.on_data_row(frame),
            b'C' => self.on_complete(frame),
            b'I' | b's' => self.on_complete(frame),
            b'E' => self.on_error(),
            b'Z' => self.on_ready(frame),
            b'1' | b'2' | b'3' | b't' | b'n' => self.on_simple_reply(frame[0]),
            _ => Action::Forward,
        }
    }

    /// Replies to pgbridge's Describes of reads the secondary may serve.
    fn on_describe_frame(&mut self, frame: &[u8]) -> Option<Action> {
        match self.queue.front_mut()? {
            Expect::DescribeStatement { params, .. } => match frame[0] {
                b't' => {
                    *params = wire::parameter_types(frame);
                    Some(Action::Drop)
                }
                b'T' | b'n' => {
                    if let Some(Expect::DescribeStatement { name, key, params }) =
                        self.queue.pop_front()
                    {
                        let row = (frame[0] == b'T').then(|| Bytes::copy_from_slice(frame));
                        let d = Described { params, row };
                        if self.described_texts.len() >= SHAPES_KEPT {
                            self.described_texts.clear();
                        }
                        self.described_texts.insert(key, d.clone());
                        self.described.insert(name, d);
                    }
                    Some(Action::Drop)
                }
                _ => None,
            },
            Expect::ShapeDescribe { row, failed, .. } => match frame[0] {
                b'1' | b't' | b'n' => Some(Action::Drop),
                b'T' => {
                    *row = Some(Bytes::copy_from_slice(frame));
                    Some(Action::Drop)
                }
                b'E' => {
                    *failed = true;
                    Some(Action::Forward)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The secondary's replies now due, with a ReadyForQuery where pgbridge answered a Sync;
    /// and how many ReadyForQuery they hold.
    pub fn take_served(&mut self) -> Option<(BytesMut, usize)> {
        let mut out: Option<BytesMut> = None;
        let mut readies = 0;
        while let Some(Expect::Served { .. }) = self.queue.front() {
            let Some(Expect::Served { bytes, ready }) = self.queue.pop_front() else {
                unreachable!()
            };
            let buf = out.get_or_insert_with(BytesMut::new);
            buf.extend_from_slice(&bytes);
            if ready {
                buf.extend_from_slice(&wire::ready(self.status));
                readies += 1;
            }
        }
        out.map(|b| (b, readies))
    }

    /// Whether a request for a read the secondary serves would be answered in its turn right
    /// after the replies owed now: none of them is from an earlier request batch (whose
    /// outcome, such as a failed transaction, the read must not skip ahead of).
    pub fn may_serve(&self) -> bool {
        self.status != b'E' && !self.batch_error && !self.touched && !self.requests_owed()
    }

    /// Replies owed to requests that end in a ReadyForQuery.
    fn requests_owed(&self) -> bool {
        self.queue.iter().any(|e| {
            matches!(
                e,
                Expect::Query { .. }
                    | Expect::Sync { .. }
                    | Expect::Call
                    | Expect::ShapeDescribe { .. }
                    | Expect::Served { ready: true, .. }
            )
        })
    }

    fn forwarded(&self) -> bool {
        match self.queue.front() {
            Some(Expect::Query { steps, .. }) => !matches!(
                steps.front(),
                Some(
                    Step::Swallow
                        | Step::Xid
                        | Step::HiddenCapture(_)
                        | Step::Commit { forward: false, .. }
                )
            ),
            Some(Expect::InjectedParse { .. }) => false,
            Some(Expect::Parse { forward })
            | Some(Expect::Bind { forward })
            | Some(Expect::Close { forward })
            | Some(Expect::Describe { forward, .. })
            | Some(Expect::Execute { forward, .. }) => *forward,
            _ => true,
        }
    }

    fn on_row_description(&mut self, frame: &[u8]) -> Action {
        self.fields = wire::row_fields(frame).unwrap_or_default();
        if let Some(Step::Shadow(_)) = self.step() {
            let fields = wire::row_names(frame)
                .iter()
                .zip(&self.fields)
                .map(|(name, f)| Field::new(name, f.type_oid, f.format as i16))
                .collect();
            self.shadow_bytes = 0;
            self.shadow_result = Some(ResultSet {
                fields,
                rows: Vec::new(),
            });
        }
        let forward = self.forwarded();
        let describe = matches!(self.queue.front(), Some(Expect::Describe { .. }));
        let action = match self.step() {
            _ if !forward => Action::Drop,
            Some(Step::Capture(c)) if c.client_returning => {
                let keep = self.fields.len().saturating_sub(c.extra);
                wire::truncate_row_description(frame, keep).map_or(Action::Forward, Action::Replace)
            }
            // The client's statement returns nothing: a Describe says NoData, a Query says nothing.
            Some(Step::Capture(_)) if describe => Action::Replace(wire::framed(b'n', &[])),
            Some(Step::Capture(_)) => Action::Drop,
            Some(Step::Swallow | Step::Xid) => Action::Drop,
            _ => Action::Forward,
        };
        if describe {
            self.queue.pop_front();
        }
        action
    }

    fn on_data_row(&mut self, frame: &[u8]) -> Action {
        let Some(step) = self.step().cloned() else {
            return Action::Forward;
        };
        match step {
            Step::Capture(c) | Step::HiddenCapture(c) => {
                let values = wire::row_values(frame).unwrap_or_default();
                if let Some(change) = rows::change(&c, &self.fields, &values) {
                    self.pending.push(change);
                }
                if self.xid.is_none() {
                    self.xid = rows::xid(&self.fields, &values);
                }
                if !c.client_returning || !self.forwarded() {
                    return Action::Drop;
                }
                let keep = values.len().saturating_sub(c.extra);
                wire::truncate_data_row(frame, keep).map_or(Action::Forward, Action::Replace)
            }
            Step::Xid => {
                let values = wire::row_values(frame).unwrap_or_default();
                self.xid = values
                    .first()
                    .copied()
                    .flatten()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|s| s.parse().ok());
                Action::Drop
            }
            Step::Swallow => Action::Drop,
            Step::Shadow(plan) => {
                self.shadow_bytes += frame.len();
                if self.shadow_bytes > MAX_COMPARED_BYTES {
                    // Too large to keep for a comparison: served as always, not compared.
                    if self.shadow_result.take().is_some() {
                        metrics::counter!("pgbridge_shadow_reads_total",
                            "table" => plan.table.clone(), "result" => "too_large")
                        .increment(1);
                    }
                }
                if let Some(result) = &mut self.shadow_result {
                    let values = wire::row_values(frame).unwrap_or_default();
                    result.rows.push(
                        values
                            .iter()
                            .map(|v| v.map(Bytes::copy_from_slice))
                            .collect(),
                    );
                }
                Action::Forward
            }
            _ => Action::Forward,
        }
    }

    /// CommandComplete, EmptyQueryResponse or PortalSuspended: the current statement is done.
    fn on_complete(&mut self, frame: &[u8]) -> Action {
        let forward = self.forwarded();
        let step = match self.queue.front_mut() {
            Some(Expect::Query { steps, .. }) => steps.pop_front().unwrap_or(Step::Pass),
            Some(Expect::Execute { .. }) => match self.queue.pop_front() {
                Some(Expect::Execute { step, .. }) => step,
                _ => Step::Pass,
            },
            _ => Step::Pass,
        };
        let tag = if frame[0] == b'C' {
            wire::command_tag(frame)
        } else {
            ""
        };
        self.apply(step, tag);
        if forward {
            Action::Forward
        } else {
            Action::Drop
        }
    }

    /// The effects of a statement that completed without error.
    fn apply(&mut self, step: Step, tag: &str) {
        match step {
            Step::Capture(_) | Step::HiddenCapture(_) => self.txn.push(self.pending.drain(..)),
            Step::Truncate(table) => self.txn.push([Change {
                table,
                op: ChangeOp::Truncate,
            }]),
            Step::Statement { table, sql, params } => self.txn.push([Change {
                table,
                op: ChangeOp::Statement {
                    sql: sql.to_string(),
                    params,
                    tag: Some(tag.to_string()),
                },
            }]),
            Step::Tx(TxControl::Savepoint(n)) => self.txn.savepoint(&n),
            Step::Tx(TxControl::RollbackTo(n)) => self.txn.rollback_to(&n),
            Step::Tx(TxControl::Release(n)) => self.txn.release(&n),
            Step::Tx(TxControl::Rollback) => {
                self.txn.clear();
                // AND CHAIN starts a transaction with an id of its own.
                self.xid = None;
            }
            Step::Tx(TxControl::Commit | TxControl::PrepareTransaction(_)) => {
                self.end_unjournaled();
                self.xid = None;
            }
            Step::Commit { id, .. } => self.outcome(id, tag == "COMMIT"),
            Step::Shadow(plan) => self.submit_shadow(&plan),
            Step::Fallback(d) => self.records.push((*d).clone()),
            _ => {}
        }
    }

    /// Hands the primary's complete answer to the shadow executor (never waits for it).
    fn submit_shadow(&mut self, plan: &ShadowPlan) {
        let (Some(shadow), Some(primary)) = (&self.shadow, self.shadow_result.take()) else {
            return;
        };
        // Sampled when the session planned the read.
        let Some(ticket) = shadow.admit(&plan.table) else {
            return;
        };
        let settings = SHADOW_SETTINGS
            .iter()
            .filter_map(|k| self.settings.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        drop(ticket.submit(ShadowJob {
            sql: plan.sql.clone(),
            params: plan.params.clone(),
            settings,
            table: plan.table.clone(),
            query: plan.query.clone(),
            primary,
            session: Some(self.session),
            after: plan.after,
            ordered: plan.ordered,
        }));
    }

    fn outcome(&mut self, id: u64, committed: bool) {
        if let Some(j) = &self.journal {
            if let Err(e) = j.append_outcome(id, committed) {
                tracing::error!(id, error = %e, "could not journal a transaction's outcome; it is resolved from the primary later");
            }
        }
        self.txn.clear();
        self.committed = committed.then_some(id);
        if committed {
            self.last_commit = Some(id);
        }
    }

    /// The transaction ended in a way pgbridge did not journal: its changes are lost to the mirror.
    fn end_unjournaled(&mut self) {
        self.lost += self.txn.len();
        self.txn.clear();
    }

    fn on_error(&mut self) -> Action {
        self.pending.clear();
        self.shadow_result = None;
        self.batch_error = true;
        match self.queue.front_mut() {
            Some(Expect::Query { steps, .. }) => {
                let voided: Vec<Step> = steps.drain(..).collect();
                for step in voided {
                    if let Step::Commit { id, .. } = step {
                        self.outcome(id, false);
                    }
                }
            }
            Some(Expect::Sync { .. })
            | Some(Expect::Call)
            | Some(Expect::ShapeDescribe { .. })
            | None => {}
            Some(_) => {
                // Extended protocol: the failed request and everything up to Sync are skipped.
                self.skipping = true;
                while let Some(e) = self.queue.front() {
                    if matches!(e, Expect::Sync { .. } | Expect::Served { ready: true, .. }) {
                        self.skipping = false;
                        break;
                    }
                    if let Some(Expect::Execute {
                        step: Step::Commit { id, .. },
                        ..
                    }) = self.queue.pop_front()
                    {
                        self.outcome(id, false);
                    }
                }
            }
        }
        Action::Forward
    }

    fn on_ready(&mut self, frame: &[u8]) -> Action {
        let status = frame.get(5).copied().unwrap_or(b'I');
        self.status = status;
        self.batch_error = false;
        let popped = self.queue.pop_front();
        if status == b'I' && !self.requests_owed() {
            self.touched = false;
        }
        let hold = match popped {
            Some(Expect::Query { hold, .. }) | Some(Expect::Sync { hold }) => hold,
            Some(Expect::ShapeDescribe {
                shape,
                answer,
                row,
                failed: false,
            }) => {
                let mut out = BytesMut::new();
                if let Some(row) = &row {
                    out.extend_from_slice(row);
                }
                out.extend_from_slice(&answer);
                out.extend_from_slice(frame);
                if self.shapes.len() >= SHAPES_KEPT {
                    self.shapes.clear();
                }
                self.shapes.insert(shape, row);
                return Action::Replace(out.freeze());
            }
            _ => false,
        };
        if status == b'I' && !hold {
            if !self.txn.is_empty() {
                self.end_unjournaled();
            }
            self.xid = None;
        }
        if hold {
            self.held = Some(status);
            return Action::Drop;
        }
        let committed = self.committed.take().filter(|_| self.sync);
        if !self.before_ready.is_empty() {
            let mut out = self.before_ready.concat();
            self.before_ready.clear();
            out.extend_from_slice(frame);
            return Action::Replace(Bytes::from(out));
        }
        match committed {
            Some(id) => Action::ForwardWhenApplied(id),
            None => Action::Forward,
        }
    }

    fn on_simple_reply(&mut self, tag: u8) -> Action {
        let forward = self.forwarded();
        let completes = match (tag, self.queue.front()) {
            (b'1', Some(Expect::Parse { .. })) => true,
            (b'1', Some(&Expect::InjectedParse { name, epoch })) => {
                if epoch == self.injected_epoch && !self.injected.contains(&name) {
                    self.injected.push(name);
                }
                true
            }
            (b'2', Some(Expect::Bind { .. })) => true,
            (b'3', Some(Expect::Close { .. })) => true,
            (b'n', Some(Expect::Describe { .. })) => true,
            (b'n', Some(Expect::Execute { .. })) => false,
            _ => false,
        };
        if completes {
            self.queue.pop_front();
        }
        if forward {
            Action::Forward
        } else {
            Action::Drop
        }
    }
}
