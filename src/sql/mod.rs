//! How pgbridge reads SQL: for each statement, does it touch a migrated table, what does it do
//! there, and the rewrites routing and mirroring need.
//!
//! The relay calls [`Analyzer::analyze`] once per statement text. Unrelated traffic stops at the
//! [`prefilter`]; the rest is tokenized, parsed, classified and rewritten once and cached by text.
//!
//! - [`prefilter`]: the cheap scan for migrated table names.
//! - [`lex`]: comments, quotes and names, for the scans that run without the parser.
//! - [`keywords`]: transaction control and session state from the leading words.
//! - [`SqlError`]: why a statement could not be rewritten (a statement's `note`).
//! - [`splice`]: byte positions in the client's text, for edits that keep it byte for byte.
//! - [`classify`]: reads, writes and DDL of migrated tables in a parsed statement.
//! - [`view`]: one rule's mapping as SQL, shared by every rewrite.
//! - [`read`]: reads rewritten for the secondary.
//! - [`capture`]: writes with RETURNING spliced in, for the primary.
//! - [`apply`]: upserts and deletes for the secondary from captured rows.
//! - [`statements`]: writes rewritten to the target for `mirror = "statements"`.
//! - [`plan`]: what the capture does with each statement, decided once per analysis.
//! - [`injected`]: the statements pgbridge itself sends on a client's session.
//! - [`copy`]: COPY FROM into a migrated table, through a temporary table.
//! - [`cache`]: the bounded LRU of analyses; [`shape`]: analyses shared by texts that differ
//!   only in their literals; [`analyzer`]: the entry point; `pipeline`: the uncached path it
//!   runs once per text (or per shape).

pub mod analyzer;
pub mod apply;
pub mod cache;
pub mod capture;
pub mod classify;
pub mod copy;
mod error;
pub mod injected;
pub mod isolation;
pub mod keywords;
pub mod lex;
mod pipeline;
pub mod plan;
pub mod prefilter;
pub mod read;
pub mod shape;
pub mod splice;
pub mod statements;
pub mod view;
mod write_rest;
pub mod write_rewrite;
pub mod write_view;

use std::ops::Range;

pub use analyzer::Analyzer;
pub use apply::ApplyPlan;
pub use capture::Capture;
pub use classify::{Write, WriteOp};
pub use error::SqlError;
pub use keywords::{SessionOp, SetKind, TxControl};
pub use plan::{Mirror, Plan, QueryPlan};
pub use statements::StatementRewrite;

use crate::rules::TableName;

/// What one statement is, as far as pgbridge cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Reads migrated tables (`reads`) and writes none.
    Read,
    /// Writes a migrated table (`writes`).
    Write,
    /// Defines or changes a migrated table.
    Ddl,
    Transaction(TxControl),
    Session(SessionOp),
    /// Touches no migrated table.
    Other,
    /// The parser rejected it; `reads` holds the migrated tables the pre-filter saw.
    Unparsed,
}

/// One statement of a text, with what pgbridge will do with it.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementInfo {
    pub kind: Kind,
    /// Its bytes in the text (without the `;`).
    pub text: Range<usize>,
    pub reads: Vec<TableName>,
    /// Tables referenced that no rule migrates: the router serves a read from the secondary
    /// only when each is one of the config's `shared_tables`.
    pub others: Vec<TableName>,
    pub writes: Vec<Write>,
    /// Calls a function that might write: keep it on the primary.
    pub may_write: bool,
    /// For `Read`: the statement rewritten to read the targets on the secondary.
    pub read_rewrite: Option<String>,
    /// For `Read` filled from a shape: the read rewrite with the client's literals as
    /// parameters, for a statement the secondary prepares once ([`read::bind`]).
    pub read_bound: Option<BoundRead>,
    /// For `Read`: checks of bound parameters that must all hold at Bind for the read to stay
    /// within its rules' `where` (`col = $1` for a `where` of `col IN ('DXY', 'EURX')`).
    pub read_params: Vec<read::Deferred>,
    /// For `Read`: staying within the rules' `where` was proven from a literal of the text that
    /// no `where` names, so the analysis is this text's alone (the shape cache must not lend it
    /// to texts with other literals).
    pub read_literal_proof: bool,
    /// For `Read`: the query orders its rows (a top-level ORDER BY), so answers compare in order.
    pub ordered: bool,
    /// For `Write` in `rows` mode: how the capture columns come back.
    /// Shared: every statement of this shape and each of its executions use the one.
    pub capture: Option<std::sync::Arc<Capture>>,
    /// For `Write` in `statements` mode: the write rewritten to the target.
    pub statement_rewrite: Option<StatementRewrite>,
    /// Why a rewrite this statement would need is missing, to report as a divergence.
    pub note: Option<String>,
    /// What the capture does with it, decided under the same rules ([`plan`]).
    pub plan: Plan,
}

impl StatementInfo {
    fn new(kind: Kind, text: Range<usize>) -> StatementInfo {
        StatementInfo {
            kind,
            text,
            reads: Vec::new(),
            others: Vec::new(),
            writes: Vec::new(),
            may_write: false,
            read_rewrite: None,
            read_bound: None,
            read_params: Vec::new(),
            read_literal_proof: false,
            ordered: false,
            capture: None,
            statement_rewrite: None,
            note: None,
            plan: Plan::default(),
        }
    }
}

/// A read rewrite with literals as parameters: `sql` has `$1`, `$2`, ... of `types` (0: left to
/// the server), bound to `values` as text.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundRead {
    pub sql: std::sync::Arc<str>,
    pub types: Vec<u32>,
    pub values: Vec<String>,
}

/// Everything pgbridge knows about a statement text (one Query message may hold several).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analysis {
    /// Migrated tables the pre-filter saw; empty when the parser never ran for the rules.
    pub seen: Vec<TableName>,
    pub statements: Vec<StatementInfo>,
    /// Set when the parser rejected the text.
    pub parse_error: Option<String>,
    /// The text to send to the primary when some statement is captured: the client's text with
    /// RETURNING spliced in, byte for byte otherwise.
    pub capture_sql: Option<String>,
}

impl Analysis {
    /// Touches no migrated table and controls nothing: relay it untouched. The parser never ran.
    pub fn is_unrelated(&self) -> bool {
        self.statements.is_empty()
    }

    /// Does any statement write a migrated table, or might it (unparsed with a migrated name)?
    pub fn writes_migrated(&self) -> bool {
        self.statements
            .iter()
            .any(|s| matches!(s.kind, Kind::Write | Kind::Unparsed | Kind::Ddl))
    }

    /// The read rewrite, when the text is one read that can be served by the secondary.
    pub fn read_rewrite(&self) -> Option<&str> {
        match self.statements.as_slice() {
            [s] if s.kind == Kind::Read && !s.may_write => s.read_rewrite.as_deref(),
            _ => None,
        }
    }

    /// The read rewrite with its literals as parameters, when [`Analysis::read_rewrite`] is
    /// and its shape has literals that can be.
    pub fn read_bound(&self) -> Option<&BoundRead> {
        match self.statements.as_slice() {
            [s] if s.kind == Kind::Read && !s.may_write && s.read_rewrite.is_some() => {
                s.read_bound.as_ref()
            }
            _ => None,
        }
    }

    /// Whether the read orders its rows (a top-level ORDER BY).
    pub fn read_ordered(&self) -> bool {
        matches!(self.statements.as_slice(), [s] if s.ordered)
    }

    /// The checks the read rewrite holds under (see [`StatementInfo::read_params`]).
    pub fn read_params(&self) -> &[read::Deferred] {
        match self.statements.as_slice() {
            [s] => &s.read_params,
            _ => &[],
        }
    }

    /// Whether bound parameters `bound(n)` (1-based; `None` when not bound) keep the read
    /// within its rules' `where`: each deferred check evaluated with the bound values, decoded
    /// by their format and declared type (a value that cannot be decoded does not hold).
    pub fn read_params_hold<'a>(&self, bound: impl Fn(usize) -> Option<read::Bound<'a>>) -> bool {
        self.read_params().iter().all(|d| d.holds(&bound))
    }
}
