//! Every difference is data (docs/DESIGN.md, principle 9): typed divergence records, one JSON
//! object per line in `[divergence] log`, counted by kind for `/api/status` and as
//! `pgbridge_divergences_total{kind,table}`.
//!
//! - [`record`]: the [`Recorder`] and its writer thread.
//! - [`compare`]: two results (shadow reads) compared by value, the difference as `detail`.
//! - [`normalize`]: queries with their literals replaced by placeholders, for the `query` field.

pub mod compare;
pub mod normalize;
pub mod record;

use serde::Serialize;

pub use normalize::{normalize_query, query_shape};
pub use record::{DivergenceError, Recorder};

/// The records written since start: in all, and by kind (`read_mismatch`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DivergenceCounts {
    pub total: u64,
    pub by_kind: std::collections::BTreeMap<String, u64>,
}

/// What kind of difference a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A shadow read returned something else on the secondary.
    ReadMismatch,
    /// A mirrored write changed something else on the secondary.
    WriteMismatch,
    /// The secondary refused a mirrored transaction for good (it is parked).
    SecondaryError,
    /// A write to a migrated table that could not be mirrored.
    UnmirroredWrite,
    /// A journal intent whose outcome on the primary cannot be known.
    InDoubt,
    /// In sync mode, a COMMIT released before the secondary applied it.
    SyncTimeout,
    /// A verify found a row missing, extra or different on the target.
    VerifyMismatch,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ReadMismatch => "read_mismatch",
            Kind::WriteMismatch => "write_mismatch",
            Kind::SecondaryError => "secondary_error",
            Kind::UnmirroredWrite => "unmirrored_write",
            Kind::InDoubt => "in_doubt",
            Kind::SyncTimeout => "sync_timeout",
            Kind::VerifyMismatch => "verify_mismatch",
        }
    }
}

/// One divergence, before the recorder stamps it.
#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    pub kind: Kind,
    /// The migrated (source) table, as rules name it.
    pub table: String,
    /// The statement, normalized ([`normalize_query`]); empty when there is none.
    pub query: String,
    /// What the primary said: a row count, a command tag, or an SQLSTATE.
    pub primary: String,
    /// What the secondary said.
    pub secondary: String,
    /// Which key and columns; row values only when the recorder does not redact.
    pub detail: serde_json::Value,
    /// The client session, when one is involved.
    pub session: Option<u64>,
}

impl Divergence {
    pub fn new(kind: Kind, table: impl Into<String>) -> Divergence {
        Divergence {
            kind,
            table: table.into(),
            query: String::new(),
            primary: String::new(),
            secondary: String::new(),
            detail: serde_json::Value::Null,
            session: None,
        }
    }
}
