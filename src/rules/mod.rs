//! The rule files DBAs write under `rules/` (docs/RULES.md is the reference), checked and held as
//! one immutable snapshot.
//!
//! A rule says how rows of a legacy `source` table correspond to rows of a `target` table in the
//! secondary. Everything else in pgbridge (routing, the SQL rewrites, mirroring) reads rules only
//! through a [`RuleSet`] snapshot, which is swapped atomically on reload so a statement always sees
//! one consistent set of rules.
//!
//! Pure, without a file or a database:
//! - `rule`: the model, [`Rule`] and [`RuleSet`]; `name` folds and quotes table and column names
//!   as PostgreSQL does.
//! - [`parse`] reads one file's text into rules, keeping every value's position for error
//!   messages; `sections` reads the key array and the columns, values and translate tables, and
//!   `compare` the table's own `[table.compare]` shadow-comparison settings, `reconcile` its
//!   `[table.reconcile]` per-group report of a verify.
//! - [`check`] holds the checks that need no database (SQL expressions, literals, one-to-one);
//!   [`table`] the checks of a rule against the shape of its live source and target tables.
//!
//! [`live`] touches the outside world: `load` reads a file or a directory of files and gathers
//! every problem, `online` checks rules against the live databases (`schema` reads their
//! catalogs) and records the columns the rewrites need, and [`reload`] watches the rules path and
//! SIGHUP and swaps in each valid new set.

pub mod check;
mod compare;
pub mod live;
mod name;
pub mod parse;
mod reconcile;
mod rule;
mod sections;
pub mod table;

use std::fmt;
use std::path::PathBuf;

pub use compare::CompareRule;
pub use live::load::{load_offline, load_online};
pub use live::reload::{self, watch};
pub(crate) use name::split_identifier;
pub use name::{quote_ident, quote_literal, TableName};
pub use reconcile::{Metric, MetricKind, ReconcileRule};
pub use rule::{MirrorMode, ReadSource, Rule, RuleSet};
pub use table::{Column, TableSchema};

/// A problem in a rule file, displayed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Why a set of rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The rules are wrong; every problem is listed.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
    /// A database needed for the online checks could not be reached.
    #[error("cannot reach the {which} database: {message}")]
    Unreachable {
        which: &'static str,
        message: String,
    },
}
