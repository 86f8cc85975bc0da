//! COPY FROM STDIN into a migrated table (`sql::copy` has the statements): the client's rows go
//! through a temporary table into the table, captured. The client sees the replies of its COPY
//! and nothing else, whatever the outcome: the COPY's CommandComplete is held until the rows
//! reached the table; an error in the data is the COPY's own; an error of the table (a key, a
//! constraint) is the primary's own error for the client's COPY, obtained by running that COPY
//! again, into the table itself, with the client's data as it came (kept while it streamed).
//! Outside a transaction the whole runs in one pgbridge commits once the rows are journaled.
//!
//! The COPY's Query keeps its ReadyForQuery from the client; when it arrives, the driver takes
//! the next stage ([`Driver::continue_pending`]), even while the client, done streaming, waits.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::super::expect::{Expect, Step};
use super::{Driver, Pending};
use crate::protocol::wire;
use crate::rules::TableName;
use crate::sql::copy;
use crate::sql::{injected, Analysis};

/// The most COPY data a session keeps to run a failed COPY again: a larger COPY that fails on
/// the table gets the INSERT's error (the same SQLSTATE, message and detail, without the COPY's
/// line).
const REPLAY_MAX_BYTES: usize = 16 << 20;

/// A COPY the driver is not done with.
pub(in crate::capture) struct PendingCopy {
    table: TableName,
    /// The client's COPY statement, as it sent it.
    text: String,
    /// The client's COPY data (CopyData frames and its CopyDone) as it came; `None` past
    /// [`REPLAY_MAX_BYTES`].
    data: Option<BytesMut>,
    /// Outside a transaction: pgbridge's own, to commit or roll back.
    autocommit: bool,
    stage: Stage,
}

enum Stage {
    /// The COPY's Query was sent.
    Sent,
    /// The INSERT failed (`error`, kept from the client): the client's COPY runs again.
    Replay { error: Bytes },
}

impl PendingCopy {
    /// Keeps the client's COPY data as it passes, for a replay.
    pub(super) fn keep(&mut self, bytes: &[u8]) {
        if !matches!(self.stage, Stage::Sent) {
            return;
        }
        if let Some(data) = &mut self.data {
            if data.len() + bytes.len() > REPLAY_MAX_BYTES {
                self.data = None;
            } else {
                data.extend_from_slice(bytes);
            }
        }
    }
}

impl<'a> Driver<'a> {
    /// Sends a COPY into migrated table `table` (its name at `name` in `text`).
    pub(super) async fn copy<W: AsyncWrite + Unpin>(
        &mut self,
        text: &str,
        name: std::ops::Range<usize>,
        table: &TableName,
        primary: &mut W,
    ) -> std::io::Result<()> {
        self.drain(primary).await?;
        let text_of_client = text;
        let insert = copy::insert(table, &copy::temp(table));
        let analysis = self.analyzer.analyze(&insert);
        let (Some(capture_sql), Some(capture)) = (
            analysis.capture_sql.clone(),
            analysis.statements.first().and_then(|s| s.capture.clone()),
        ) else {
            self.copy_uncaptured(&analysis, text);
            return Ok(());
        };
        let not_null = self.not_null(table);
        let sql = copy::statements(text, name, table, &not_null, &capture_sql);
        // CREATE, [ALTER,] COPY, SAVEPOINT, INSERT, RELEASE, DROP.
        let mut steps: Vec<Step> = sql.iter().map(|_| Step::Swallow).collect();
        let n = steps.len();
        steps[n - 5] = Step::HoldComplete;
        steps[n - 3] = Step::HiddenCapture(capture);
        let autocommit = self.shared.lock().status == b'I';
        // A line comment at the end of the client's COPY ends at the newline.
        let mut text = sql.join("\n;");
        if autocommit {
            text = injected::in_transaction(&text);
            steps.insert(0, Step::Swallow);
        }
        self.send_held(&text, steps);
        self.pending = Some(Pending::Copy(PendingCopy {
            table: table.clone(),
            text: text_of_client.to_string(),
            data: Some(BytesMut::new()),
            autocommit,
            stage: Stage::Sent,
        }));
        Ok(())
    }

    /// The table's NOT NULL columns, as the rules' live check found them.
    fn not_null(&self, table: &TableName) -> Vec<String> {
        let rules = self.analyzer.rules();
        let columns = rules.get(table).and_then(|r| r.source_columns.clone());
        columns
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.not_null)
            .map(|c| c.name)
            .collect()
    }

    /// A COPY whose rows cannot be captured goes to the primary as it is, and is recorded.
    fn copy_uncaptured(&mut self, insert: &Analysis, text: &str) {
        let reason = "COPY into a migrated table cannot be captured".to_string();
        if let Some(s) = insert.statements.first() {
            self.report_unmirrored(s, insert, reason);
        }
        self.expect(Expect::Query {
            steps: VecDeque::new(),
            hold: false,
        });
        self.out.extend_from_slice(&wire::query(text));
    }

    /// A Query of pgbridge's whose ReadyForQuery is held for the driver.
    fn send_held(&mut self, sql: &str, steps: Vec<Step>) {
        self.expect(Expect::Query {
            steps: steps.into(),
            hold: true,
        });
        self.out.extend_from_slice(&wire::query(sql));
    }

    /// Takes the next stage of a pending COPY whose held reply (of status `status`) arrived.
    pub(super) async fn continue_copy(
        &mut self,
        mut pending: PendingCopy,
        status: u8,
    ) -> std::io::Result<()> {
        match std::mem::replace(&mut pending.stage, Stage::Sent) {
            Stage::Sent => self.copied(pending, status).await,
            Stage::Replay { error } => self.replayed(&pending, status, error).await,
        }
    }

    /// The COPY's Query answered: done, unless its INSERT failed and the client's data was
    /// kept, to run the client's COPY again for the primary's own error.
    async fn copied(&mut self, mut pending: PendingCopy, status: u8) -> std::io::Result<()> {
        let error = self.shared.lock().copy_error.take();
        let (Some(error), Some(data)) = (error.clone(), pending.data.take()) else {
            return self.end_copy(&pending, error, status).await;
        };
        let sql = copy::replay(&pending.text, &pending.table).join(";\n");
        self.send_held(&sql, vec![Step::Hidden, Step::Hidden, Step::Replay]);
        self.out.extend_from_slice(&data);
        pending.stage = Stage::Replay { error };
        self.pending = Some(Pending::Copy(pending));
        Ok(())
    }

    /// The replay answered. It failed (status `E`): its error, the primary's own for the
    /// client's COPY, went to the client. It succeeded (a conflicting row went away in
    /// between): its rows are undone, and the client gets the INSERT's error.
    async fn replayed(
        &mut self,
        pending: &PendingCopy,
        status: u8,
        error: Bytes,
    ) -> std::io::Result<()> {
        if status == b'E' {
            return self.end_copy(pending, None, status).await;
        }
        if pending.autocommit {
            return self.end_copy(pending, Some(error), b'E').await;
        }
        self.shared.lock().before_ready.push(error);
        let fail = injected::raise("25P02", "pgbridge: the COPY failed");
        self.expect(Expect::Query {
            steps: VecDeque::from([Step::Hidden, Step::Hidden]),
            hold: false,
        });
        let sql = format!("{};\n{fail}", copy::undo_replay());
        self.out.extend_from_slice(&wire::query(&sql));
        Ok(())
    }

    /// Ends the COPY for the client: `error` (if pgbridge kept one back) and the ReadyForQuery
    /// of `status`; outside a transaction, after pgbridge's COMMIT (the rows journaled) or
    /// ROLLBACK.
    async fn end_copy(
        &mut self,
        pending: &PendingCopy,
        error: Option<Bytes>,
        status: u8,
    ) -> std::io::Result<()> {
        if pending.autocommit {
            if let Some(error) = error {
                self.shared.lock().before_ready.push(error);
            }
            return self.finish_autocommit(status).await;
        }
        self.queue_served(error.unwrap_or_default(), true);
        Ok(())
    }
}
