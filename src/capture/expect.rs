//! The vocabulary the two directions of a session share: what each request sent to the primary
//! expects back ([`Expect`], with the [`Step`] its results belong to), and what to do with one
//! reply frame ([`Action`]).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::mirror::Row;
use crate::rules::TableName;
use crate::sql::{Capture, SessionOp, TxControl};

/// What the results of one statement get.
#[derive(Debug, Clone)]
pub enum Step {
    /// The client's, untouched.
    Pass,
    /// pgbridge's own: the client sees none of it.
    Swallow,
    /// A captured write: its rows become changes of the open transaction.
    Capture(Arc<Capture>),
    /// pgbridge's own captured write (the INSERT ... SELECT behind a COPY): captured, never shown;
    /// once it succeeded, the client's held CommandComplete is released in its place.
    HiddenCapture(Arc<Capture>),
    /// The client's statement whose CommandComplete waits for the next step to succeed (the
    /// COPY into the temporary table, whose rows the INSERT ... SELECT still has to move): it
    /// reaches the client then, or never, when that step fails.
    HoldComplete,
    /// The client's COPY run again by pgbridge, into the table itself, after its INSERT ...
    /// SELECT failed: the client gets its error (the primary's own for that COPY), nothing else.
    Replay,
    /// pgbridge's own statement, its error too kept from the client.
    Hidden,
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
    /// The client's `SET`, `RESET` or `DISCARD` (`text`): the session's settings follow it
    /// once it completed.
    Set { op: SessionOp, text: Arc<str> },
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
    /// A simple Query's read with its literals as parameters, when its shape binds.
    pub bound: Option<crate::sql::BoundRead>,
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
        /// Sent after the Execute of a COPY FROM STDIN and before the client's CopyDone or
        /// CopyFail: once the server answers that COPY with CopyInResponse, it ignores this
        /// Sync (no ReadyForQuery comes for it); when the COPY fails first, it counts.
        in_copy: bool,
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
    /// follows the primary's row description to the client, before the primary's ReadyForQuery,
    /// when the secondary described the same columns (`secondary`); otherwise the driver has the
    /// primary run the read after all.
    ShapeDescribe {
        shape: String,
        answer: Bytes,
        secondary: Option<Bytes>,
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
