//! A simple-protocol Query, as the capture runs it: statements that write migrated tables go
//! with RETURNING spliced in; a transaction that commits with changes is split before its
//! COMMIT so that the changes are journaled first; a write outside a transaction runs in one
//! pgbridge begins and commits; a COPY into a migrated table goes through a temporary table.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWrite;

use super::super::expect::{Expect, Step};
use super::journal::Journaled;
use super::{note_schema_change, Driver, Side};
use crate::protocol::wire;
use crate::sql::{injected, Analysis, Mirror, QueryPlan};

/// What becomes of a Query that leaves no changes.
enum ReadSteps {
    /// The secondary answered it: nothing goes to the primary.
    Served,
    /// It goes to the primary, with these steps.
    Send(Vec<Step>),
}

impl ReadSteps {
    fn or_served(self) -> Option<Vec<Step>> {
        match self {
            ReadSteps::Served => None,
            ReadSteps::Send(steps) => Some(steps),
        }
    }
}

/// A Query whose steps are already decided (it leaves changes) goes to the primary as they are.
impl From<Vec<Step>> for ReadSteps {
    fn from(steps: Vec<Step>) -> Self {
        ReadSteps::Send(steps)
    }
}

impl<'a> Driver<'a> {
    /// A client's Query: its text's plan carried out, or relayed as it is when the text
    /// touches no migrated table.
    pub(super) async fn query<W: AsyncWrite + Unpin>(
        &mut self,
        frame: &[u8],
        primary: &mut W,
    ) -> std::io::Result<()> {
        // A simple Query ends the unnamed statement and portal.
        self.statements.remove("");
        self.portals.remove("");
        let Some(text) = wire::query_text(frame) else {
            self.touch(None);
            self.pass_query(frame);
            return Ok(());
        };
        let analysis = self.analyzer.analyze(text);
        self.forget_injected(&analysis);
        self.touch(Some(&analysis));
        note_schema_change(&analysis);
        if analysis.is_unrelated() {
            self.pass_query(frame);
            return Ok(());
        }
        if !matches!(analysis.statements.as_slice(), [s] if matches!(s.plan.mirror, Mirror::CopyFrom { .. }))
        {
            self.report_unmirrored_writes(&analysis);
        }
        let plan = analysis.query_plan();
        if self.run_changes(&analysis, &plan, text, primary).await? {
            return Ok(());
        }
        if self.serving.is_some() {
            self.follow_settings(&analysis);
        }
        let steps = match plan.changes {
            true => ReadSteps::from(self.steps(&analysis, text)),
            false => self.read_steps(&analysis, text).await,
        };
        if let Some(steps) = steps.or_served() {
            self.send_query(frame, &analysis, steps, plan.needs_xid);
        }
        Ok(())
    }

    /// A Query relayed as the client sent it.
    fn pass_query(&mut self, frame: &[u8]) {
        self.expect(Expect::Query {
            steps: VecDeque::new(),
            hold: false,
        });
        self.pass(frame);
    }

    /// The Queries whose changes take more than their own text: a COPY into a migrated table, a
    /// COMMIT after changes (journaled first), a write outside a transaction (run in one
    /// pgbridge commits). Returns whether `analysis` was one of them, and handled.
    async fn run_changes<W: AsyncWrite + Unpin>(
        &mut self,
        analysis: &Analysis,
        plan: &QueryPlan,
        text: &str,
        primary: &mut W,
    ) -> std::io::Result<bool> {
        if let [s] = analysis.statements.as_slice() {
            if let Mirror::CopyFrom { table, name, .. } = &s.plan.mirror {
                self.copy(text, name.clone(), table, primary).await?;
                return Ok(true);
            }
        }
        let pending = !self.shared.lock().txn.is_empty();
        let commit = plan
            .commit_at
            .filter(|&k| pending || analysis.changes_before(k));
        if let Some(k) = commit {
            let start = analysis.statements[k].text.start;
            self.commit_split(text, start, primary).await?;
            return Ok(true);
        }
        if !plan.changes || plan.begins || plan.other_tx {
            return Ok(false);
        }
        self.drain(primary).await?;
        if self.shared.lock().status != b'I' {
            return Ok(false);
        }
        let sql = analysis.capture_sql.as_deref().unwrap_or(text);
        let steps = self.steps(analysis, text);
        self.autocommit(sql, steps, plan.needs_xid, primary).await?;
        Ok(true)
    }

    /// The steps of a Query that leaves no changes: served by the secondary when the router
    /// says so (nothing more to send), or its read shadowed, or its statements' own steps.
    async fn read_steps(&mut self, analysis: &Analysis, text: &str) -> ReadSteps {
        let mut steps = self.steps(analysis, text);
        if self.serving.is_some() {
            match self.serve_query(analysis, text).await {
                Ok(()) => {
                    self.count_read(analysis, Side::Secondary);
                    return ReadSteps::Served;
                }
                Err(Some(d)) => steps = vec![Step::Fallback(Arc::new(d))],
                Err(None) => {}
            }
        }
        let side = match self.shadow_step(analysis, text) {
            Some(step) => {
                steps = vec![step];
                Side::Shadow
            }
            None => Side::Primary,
        };
        self.count_read(analysis, side);
        ReadSteps::Send(steps)
    }

    /// Sends the Query to the primary: the capture rewrite when a statement is captured, the
    /// client's bytes otherwise.
    fn send_query(
        &mut self,
        frame: &[u8],
        analysis: &Analysis,
        mut steps: Vec<Step>,
        needs_xid: bool,
    ) {
        let bytes = match &analysis.capture_sql {
            // The transaction's id comes back with its first captured statement, in the same
            // message, so that the COMMIT needs no round trip of its own to learn it.
            Some(sql) if needs_xid && self.shared.lock().xid.is_none() => {
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
    }

    /// The Query's statements before `start` run first (their reply held), then the changes are
    /// journaled, then the rest, from the COMMIT on, is sent.
    pub(super) async fn commit_split<W: AsyncWrite + Unpin>(
        &mut self,
        text: &str,
        start: usize,
        primary: &mut W,
    ) -> std::io::Result<()> {
        self.drain(primary).await?;
        let (before, rest) = text.split_at(start);
        if !before.trim().trim_matches(';').trim().is_empty() {
            let a = self.analyzer.analyze(before);
            let steps = self.steps(&a, before);
            let sql = a.capture_sql.as_deref().unwrap_or(before).to_string();
            if self.held_query(&sql, steps, primary).await? == b'E' {
                // A statement failed: the rest of the client's Query, its COMMIT included,
                // never runs, as in one Query; the client gets the failed transaction's status.
                self.queue_served(Bytes::new(), true);
                return Ok(());
            }
        }
        let a = self.analyzer.analyze(rest);
        let mut steps = self.steps(&a, rest);
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
    pub(super) async fn autocommit<W: AsyncWrite + Unpin>(
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

    /// The second half of an autocommit: journal and COMMIT, or ROLLBACK after an error.
    pub(super) async fn finish_autocommit(&mut self, status: u8) -> std::io::Result<()> {
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
}
