//! The replies that end a request: errors, ReadyForQuery, the one-frame replies of the extended
//! protocol, and the answers to pgbridge's own Describes; and what a transaction's end means
//! for its buffered changes and its journal intent.

use bytes::{Bytes, BytesMut};

use super::super::expect::{Action, Described, Expect, Step};
use super::{Kept, ShapeCheck, Tracker, SHAPES_KEPT};
use crate::protocol::wire;

impl Tracker {
    /// Replies to pgbridge's Describes of reads the secondary may serve.
    pub(super) fn on_describe_frame(&mut self, frame: &[u8]) -> Option<Action> {
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
                        self.described_texts.insert(key, Kept::new(d.clone()));
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

    pub(super) fn outcome(&mut self, id: u64, committed: bool) {
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
    pub(super) fn end_unjournaled(&mut self) {
        self.lost += self.txn.len();
        let mut tables: Vec<String> = self
            .txn
            .changes()
            .iter()
            .map(|c| c.table.to_string())
            .collect();
        tables.dedup();
        for table in tables {
            let why = "a transaction ended without a COMMIT pgbridge could journal";
            crate::mirror::stale::mark(&table, why);
        }
        self.txn.clear();
    }

    pub(super) fn on_error(&mut self, frame: &[u8]) -> Action {
        self.pending.clear();
        self.sets.error();
        // What the failed step was to vouch for never happened.
        self.held_complete = None;
        let action = match self.step() {
            // A COPY's INSERT ... SELECT: its error is not the one the client's COPY would get;
            // the driver gets the primary's own (`capture/drive/copy.rs`).
            Some(Step::HiddenCapture(_)) => {
                self.copy_error = Some(Bytes::copy_from_slice(frame));
                Action::Drop
            }
            Some(Step::Hidden) => Action::Drop,
            _ => Action::Forward,
        };
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
        action
    }

    /// ReadyForQuery: the request it ends is done, and with it, when the session is idle
    /// again, a transaction pgbridge did not journal.
    pub(super) fn on_ready(&mut self, frame: &[u8]) -> Action {
        let status = frame.get(5).copied().unwrap_or(b'I');
        self.status = status;
        self.batch_error = false;
        self.sets.ready(status);
        if status == b'I' {
            self.txn_isolation = None;
        }
        let popped = self.queue.pop_front();
        if status == b'I' && !self.requests_owed() {
            self.touched = false;
            // The transaction that wrote them ended: a verify now sees what it did.
            for (table, why) in self.stale.drain(..) {
                crate::mirror::stale::mark(&table, &why);
            }
        }
        let hold = match popped {
            Some(Expect::Query { hold, .. }) | Some(Expect::Sync { hold, .. }) => hold,
            Some(Expect::ShapeDescribe {
                shape,
                answer,
                secondary,
                row,
                failed: false,
            }) => return self.served_after_description(frame, shape, &answer, secondary, row),
            Some(Expect::ShapeDescribe { failed: true, .. }) => {
                self.shape_checked = Some(ShapeCheck::Refused);
                false
            }
            _ => false,
        };
        if status == b'I' && !hold {
            if !self.txn.is_empty() {
                self.end_unjournaled();
            }
            self.xid = None;
            self.lsn = None;
            // The client's own ReadyForQuery (not one pgbridge holds while it still has
            // statements of its own to send, a COPY's or an autocommit write's): the session's
            // writes are done, for the write switch.
            if !self.requests_owed() {
                self.active.idle(self.pushed);
                self.other_write = false;
            }
        }
        if hold {
            self.held = Some(status);
            return Action::Drop;
        }
        self.release_ready(frame)
    }

    /// A simple-protocol read the secondary served: its rows behind the primary's row
    /// description of the text, before the primary's ReadyForQuery; the description is kept
    /// for the query's shape.
    fn served_after_description(
        &mut self,
        ready: &[u8],
        shape: String,
        answer: &[u8],
        secondary: Option<Bytes>,
        row: Option<Bytes>,
    ) -> Action {
        let same = match (&row, &secondary) {
            (Some(ours), Some(theirs)) => wire::same_columns(ours, theirs),
            (None, None) => true,
            _ => false,
        };
        if !same {
            // The driver has the primary run the read; the client gets its answer instead.
            self.shape_checked = Some(ShapeCheck::Differs);
            self.held = Some(ready.get(5).copied().unwrap_or(b'I'));
            return Action::Drop;
        }
        self.shape_checked = Some(ShapeCheck::Same);
        // Counted before the client has the rows, as the driver counts what it serves at once.
        crate::capture::secondary::served("served");
        let mut out = BytesMut::new();
        if let Some(row) = &row {
            out.extend_from_slice(row);
        }
        out.extend_from_slice(answer);
        out.extend_from_slice(ready);
        if self.shapes.len() >= SHAPES_KEPT {
            self.shapes.clear();
        }
        self.shapes.insert(shape, Kept::new(row));
        Action::Replace(out.freeze())
    }

    /// The client's ReadyForQuery, after pgbridge's own messages for it, or once the applier
    /// applied the transaction it ends (sync mode).
    fn release_ready(&mut self, frame: &[u8]) -> Action {
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

    pub(super) fn on_simple_reply(&mut self, tag: u8) -> Action {
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
