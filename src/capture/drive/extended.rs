//! The extended protocol, as the capture runs it: Parse (the capture rewrite in place of the
//! client's text), Bind (result formats for the capture's columns), Describe, Execute (wrapped
//! in pgbridge's own transaction outside one, the captured columns' types asked for), and Sync
//! (pgbridge's COMMIT or ROLLBACK of a batch it wrapped).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWrite;

use super::super::expect::{Expect, Step};
use super::{rolled_back, single_step, Driver, Side, REFUSED};
use crate::mirror::{Row, Value};
use crate::protocol::messages::{error_response, Severity};
use crate::protocol::wire;
use crate::sql::{injected, Analysis, Kind, TxControl};

/// Bound parameters as a replayable row: the declared type (0 when the client left it to the
/// server) and the client's format.
pub(super) fn params_row(types: &[u32], params: &[wire::Param<'_>]) -> Row {
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

impl<'a> Driver<'a> {
    pub(super) fn parse(&mut self, frame: &[u8]) {
        let Some((name, query, _)) = wire::parse_message(frame) else {
            self.pass(frame);
            return;
        };
        let name = name.to_string();
        if crate::sql::plan::copy_from_stdin(query) {
            self.copy_statements.insert(name.clone());
        } else {
            self.copy_statements.remove(&name);
        }
        let analysis = self.analyzer.analyze(query);
        self.forget_injected(&analysis);
        super::note_schema_change(&analysis);
        let bytes = if analysis.is_unrelated() {
            None
        } else {
            self.report_unmirrored_writes(&analysis);
            analysis
                .capture_sql
                .as_deref()
                .and_then(|sql| wire::replace_parse_query(frame, sql))
        };
        if !analysis.is_unrelated() {
            self.param_types
                .insert(name.clone(), wire::parse_param_types(frame));
            let session =
                matches!(analysis.statements.as_slice(), [s] if matches!(s.kind, Kind::Session(_)));
            if analysis.read_rewrite().is_some() || session {
                self.texts.insert(name.clone(), Arc::from(query));
            }
        }
        self.statements.insert(name.clone(), analysis.clone());
        self.expect(Expect::Parse {
            forward: !self.hidden_parse,
        });
        match bytes {
            Some(b) => self.out.extend_from_slice(&b),
            None => self.pass(frame),
        }
        if self.serving.is_some() {
            self.describe_for_serving(&name, query, frame, &analysis);
        }
    }

    pub(in crate::capture) fn bind(&mut self, frame: &[u8]) {
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
        self.expect(Expect::Bind {
            forward: !self.hidden_bind,
        });
        match edited {
            Some(b) => self.out.extend_from_slice(&b),
            None => self.pass(frame),
        }
    }

    /// The client's Describe, of a statement or a portal.
    pub(in crate::capture) fn describe(&mut self, frame: &[u8]) {
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

    /// The client's Execute. `described`: the portal of the client's Describe sent just
    /// before it.
    pub(super) async fn execute<W: AsyncWrite + Unpin>(
        &mut self,
        frame: &[u8],
        described: Option<&str>,
        primary: &mut W,
    ) -> std::io::Result<()> {
        let portal = wire::execute_portal(frame);
        let analysis = portal.and_then(|p| self.portals.get(p).cloned());
        if let Some(a) = &analysis {
            self.forget_injected(a);
        }
        let step = self.execute_step(analysis.as_deref(), portal);
        let statement = portal.and_then(|p| self.portal_statements.get(p));
        if statement.is_some_and(|s| self.copy_statements.contains(s)) {
            // Until the client's CopyDone, a Sync it sends may be one the server ignores.
            self.copy_in = true;
        }
        match &step {
            Step::Tx(TxControl::Begin(_)) => self.began = true,
            // Changes may still be on their way (an Execute earlier in this batch).
            Step::Tx(TxControl::Commit) if self.xid_asked || !self.shared.lock().txn.is_empty() => {
                return self.execute_commit(frame, primary).await;
            }
            Step::Capture(_) | Step::Truncate(_) | Step::Statement { .. } => {
                self.begin_if_outside(primary).await?;
                if matches!(step, Step::Capture(_)) && portal.is_some() && portal != described {
                    // The types of the captured columns, for the journal (unless the client's
                    // own Describe of this portal, answered just before the rows, gave them).
                    self.describe_captured(portal.unwrap_or_default(), &step);
                }
            }
            _ => {}
        }
        self.send_execute(frame, step)
    }

    /// The step of a portal's Execute: its statement's plan, with the bound parameters of a
    /// replayed write; a read flagged `shadow`; or the record of a read the secondary failed.
    fn execute_step(&mut self, analysis: Option<&Analysis>, portal: Option<&str>) -> Step {
        let mut step = analysis.map_or(Step::Pass, single_step);
        if let (Some(a), Some(portal)) = (analysis, portal) {
            if let Some(set) = self.portal_set(a, portal) {
                step = set;
            }
        }
        if let Step::Statement { params, .. } = &mut step {
            if let Some(bound) = portal.and_then(|p| self.portal_params.get(p)) {
                *params = bound.clone();
            }
        }
        if let (Step::Pass, Some(a), Some(portal)) = (&step, analysis, portal) {
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
        if let Some(a) = analysis {
            let side = match step {
                Step::Shadow(_) => Side::Shadow,
                _ => Side::Primary,
            };
            self.count_read(a, side);
        }
        step
    }

    /// The step of a portal running a prepared `SET`, `RESET` or `DISCARD`.
    fn portal_set(&self, analysis: &Analysis, portal: &str) -> Option<Step> {
        let stmt = self.portal_statements.get(portal)?;
        let text = self.texts.get(stmt)?;
        Some(self.steps(analysis, text).pop())
            .flatten()
            .filter(|s| matches!(s, Step::Set { .. }))
    }

    /// A change outside a transaction runs inside one pgbridge begins (and commits at Sync).
    async fn begin_if_outside<W: AsyncWrite + Unpin>(
        &mut self,
        primary: &mut W,
    ) -> std::io::Result<()> {
        if self.began || self.wrapped {
            return Ok(());
        }
        if self.settled_status().is_none() {
            self.drain_extended(primary).await?;
        }
        if self.shared.lock().status == b'I' {
            self.inject("pgbridge_begin", injected::BEGIN, Step::Swallow, false);
            self.wrapped = true;
        }
        Ok(())
    }

    /// pgbridge's Describe of the portal a captured write runs in: its RowDescription gives the
    /// captured columns' types (the client never sees it).
    fn describe_captured(&mut self, portal: &str, step: &Step) {
        self.expect(Expect::Describe {
            step: step.clone(),
            forward: false,
        });
        self.out.extend_from_slice(&wire::describe_portal(portal));
    }

    /// Sends the client's Execute, and asks for the transaction's id behind its first change.
    pub(super) fn send_execute(&mut self, frame: &[u8], step: Step) -> std::io::Result<()> {
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

    /// Mid-batch, the server holds its replies until Sync or Flush: ask it to send them.
    pub(super) async fn drain_extended<W: AsyncWrite + Unpin>(
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
    pub(super) fn settled_status(&self) -> Option<u8> {
        let t = self.shared.lock();
        (t.settled() && !t.batch_error).then_some(t.status)
    }

    pub(super) async fn execute_commit<W: AsyncWrite + Unpin>(
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

    /// The client's Sync: the end of a batch, where pgbridge commits a transaction it began
    /// (once the changes are journaled), or rolls it back after an error.
    pub(super) async fn sync<W: AsyncWrite + Unpin>(
        &mut self,
        frame: &[u8],
        primary: &mut W,
    ) -> std::io::Result<()> {
        self.began = false;
        let in_copy = self.copy_in;
        if !std::mem::take(&mut self.wrapped) {
            self.expect(Expect::Sync {
                hold: false,
                in_copy,
            });
            self.pass(frame);
            return Ok(());
        }
        self.drain_extended(primary).await?;
        if self.shared.lock().batch_error {
            return self.end_failed_batch(frame, primary).await;
        }
        match self.extended_intent(primary).await? {
            Ok(id) => self.inject(
                "pgbridge_commit",
                injected::COMMIT,
                Step::Commit { id, forward: false },
                false,
            ),
            Err(message) => {
                let refusal = error_response(Severity::Error, REFUSED, &rolled_back(&message));
                self.shared.lock().before_ready.push(refusal);
                let rollback = injected::ROLLBACK;
                self.inject("pgbridge_rollback", rollback, Step::Swallow, false);
            }
        }
        self.expect(Expect::Sync {
            hold: false,
            in_copy,
        });
        self.pass(frame);
        Ok(())
    }

    /// The batch failed inside pgbridge's transaction: end it as the implicit one would.
    async fn end_failed_batch<W: AsyncWrite + Unpin>(
        &mut self,
        frame: &[u8],
        primary: &mut W,
    ) -> std::io::Result<()> {
        self.expect(Expect::Sync {
            hold: true,
            in_copy: false,
        });
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
