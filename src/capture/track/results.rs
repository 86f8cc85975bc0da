//! The results of a statement: its row description, its rows and its completion, each handled
//! as the statement's step says (forwarded, stripped of the capture's columns, captured as
//! changes, kept for a shadow comparison, or hidden).

use bytes::Bytes;

use super::super::expect::{Action, Expect, ShadowPlan, Step};
use super::super::rows;
use super::{Tracker, SHADOW_SETTINGS};
use crate::divergence::compare::{Field, ResultSet};
use crate::mirror::{Change, ChangeOp};
use crate::protocol::wire;
use crate::reads::shadow::ShadowJob;
use crate::reads::MAX_COMPARED_BYTES;
use crate::sql::{Capture, SessionOp, SetKind, TxControl};

impl Tracker {
    pub(super) fn on_row_description(&mut self, frame: &[u8]) -> Action {
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

    pub(super) fn on_data_row(&mut self, frame: &[u8]) -> Action {
        let Some(step) = self.step().cloned() else {
            return Action::Forward;
        };
        match step {
            Step::Capture(c) | Step::HiddenCapture(c) => self.captured_row(frame, &c),
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
            Step::Swallow | Step::Hidden => Action::Drop,
            Step::Shadow(plan) => {
                self.shadow_row(frame, &plan);
                Action::Forward
            }
            _ => Action::Forward,
        }
    }

    /// A row of a captured write: a change of the open transaction (and its id); the client
    /// gets its own columns, or nothing when it asked for no RETURNING.
    fn captured_row(&mut self, frame: &[u8], c: &Capture) -> Action {
        let values = wire::row_values(frame).unwrap_or_default();
        if let Some(change) = rows::change(c, &self.fields, &values) {
            self.pending.push(change);
        }
        if self.xid.is_none() {
            self.xid = rows::xid(&self.fields, &values);
        }
        self.lsn = self.lsn.max(rows::lsn(&self.fields, &values));
        if !c.client_returning || !self.forwarded() {
            return Action::Drop;
        }
        let keep = values.len().saturating_sub(c.extra);
        wire::truncate_data_row(frame, keep).map_or(Action::Forward, Action::Replace)
    }

    /// A row of a shadowed read, kept for the comparison up to [`MAX_COMPARED_BYTES`].
    fn shadow_row(&mut self, frame: &[u8], plan: &ShadowPlan) {
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
            let row = values.iter().map(|v| v.map(Bytes::copy_from_slice));
            result.rows.push(row.collect());
        }
    }

    /// CommandComplete, EmptyQueryResponse or PortalSuspended: the current statement is done.
    pub(super) fn on_complete(&mut self, frame: &[u8]) -> Action {
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
        match step {
            Step::HoldComplete => {
                self.held_complete = Some(Bytes::copy_from_slice(frame));
                return Action::Drop;
            }
            Step::HiddenCapture(_) => {
                self.apply(step, tag);
                return self
                    .held_complete
                    .take()
                    .map_or(Action::Drop, Action::Replace);
            }
            Step::Replay => return Action::Drop,
            _ => self.apply(step, tag),
        }
        if forward {
            Action::Forward
        } else {
            Action::Drop
        }
    }

    /// The effects of a statement that completed without error.
    pub(super) fn apply(&mut self, step: Step, tag: &str) {
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
            Step::Set {
                op: SessionOp::Set(SetKind::TransactionIsolation(level)),
                ..
            }
            | Step::Tx(TxControl::Begin(Some(level))) => self.txn_isolation = Some(level),
            Step::Set { op, text } => self.sets.completed(&op, &text),
            Step::Tx(TxControl::Savepoint(n)) => {
                self.txn.savepoint(&n);
                self.sets.savepoint(&n);
            }
            Step::Tx(TxControl::RollbackTo(n)) => {
                self.txn.rollback_to(&n);
                self.sets.rollback_to(&n);
            }
            Step::Tx(TxControl::Release(n)) => {
                self.txn.release(&n);
                self.sets.release(&n);
            }
            Step::Tx(TxControl::Rollback) => {
                self.txn.clear();
                self.sets.rollback();
                // AND CHAIN starts a transaction with an id of its own.
                self.xid = None;
                self.lsn = None;
            }
            Step::Tx(TxControl::Commit | TxControl::PrepareTransaction(_)) => {
                self.end_unjournaled();
                self.xid = None;
                self.lsn = None;
            }
            Step::Commit { id, .. } => self.outcome(id, tag == "COMMIT"),
            Step::Shadow(plan) => self.submit_shadow(&plan),
            Step::Fallback(d) => self.records.push((*d).clone()),
            _ => {}
        }
    }

    /// Hands the primary's complete answer to the shadow executor (never waits for it).
    pub(super) fn submit_shadow(&mut self, plan: &ShadowPlan) {
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
            bound: plan.bound.clone(),
            settings,
            table: plan.table.clone(),
            query: plan.query.clone(),
            primary,
            session: Some(self.session),
            after: plan.after,
            ordered: plan.ordered,
        }));
    }
}
