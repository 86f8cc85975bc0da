//! Mirroring after capture: what happens to a committed transaction's row images once the session
//! has them (docs/DESIGN.md, principles 5 to 7).
//!
//! - [`journal`]: the durable, append-only queue on disk. The session appends an *intent* (the
//!   transaction's row images and the primary's xid) and waits for its group-committed fsync
//!   before it sends COMMIT to the primary, then appends the *outcome* once the primary answered.
//! - [`codec`]: the binary encoding of a [`TxnRecord`] inside a journal record.
//! - [`apply`]: the one applier task, which applies committed intents to the secondary in intent
//!   id order, each together with its journal position, retrying transient errors forever and
//!   parking the transactions the secondary refuses for good.
//! - [`compare`]: what each applied write did on the target against what it did on the primary
//!   (`write_mismatch` records).
//! - [`resolve`]: intents whose outcome never reached the journal (pgbridge died between COMMIT
//!   and outcome) are resolved by asking the primary `pg_xact_status`.
//! - [`parked`]: transactions the secondary refused, kept for an operator.
//! - [`status`]: the figures `/api/status` and `/metrics` show.
//! - [`reverse`]: the other direction, after the writes moved to the secondary: changes to a
//!   rule's target, queued there by a trigger, applied to the source on the primary.
//!
//! One transaction, as the session drives it:
//! ```text
//! let id = journal.append_intent(txn).await?;   // durable on return; refuse -> client error
//! send COMMIT to the primary, read its reply
//! journal.append_outcome(id, committed)?;       // committed = the primary said COMMIT
//! if sync mode: applier.wait_applied(id, timeout).await
//! release the client's CommandComplete/ReadyForQuery
//! ```

pub mod apply;
pub mod codec;
pub mod compare;
pub mod journal;
pub mod parked;
pub mod resolve;
pub mod reverse;
pub mod stale;
pub mod status;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::rules::TableName;

pub use apply::{Applier, ApplierHandle, WaitError};

/// Serializes the creation of pgbridge's own schemas and tables (`pgbridge`, `pgbridge_w`) in a
/// database: concurrent `CREATE ... IF NOT EXISTS` of one name (the applier, the jobs, the
/// reverse mirror, a write switch, another instance) can fail on the catalog's unique index.
pub const SCHEMA_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(7262074100812650241)";

/// `sql` (statements separated by `;`) in one transaction under [`SCHEMA_LOCK_SQL`].
pub fn under_schema_lock(sql: &str) -> String {
    format!("BEGIN; {SCHEMA_LOCK_SQL}; {sql}; COMMIT")
}
pub use journal::{Journal, JournalError, JournalOptions};
pub use status::MirrorStats;

/// One committed (or about to be committed) transaction's changes to migrated tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnRecord {
    /// The capturing session's id, for logs and divergence records.
    pub session: u64,
    /// The primary's transaction id (`pg_current_xact_id()`, an xid8), to resolve the outcome
    /// with `pg_xact_status` when it never reached the journal.
    pub xid: Option<i64>,
    /// When the session captured it, in microseconds since the Unix epoch.
    pub captured_at_us: i64,
    /// Settings of the capturing session that text values depend on (DateStyle, IntervalStyle,
    /// TimeZone, extra_float_digits, bytea_output, ...), set locally on the secondary before the
    /// changes are applied.
    pub settings: Vec<(String, String)>,
    pub changes: Vec<Change>,
    /// The largest WAL position its captured rows were written at on the primary
    /// (`pg_current_wal_insert_lsn()`): of two transactions that wrote one row, the later one's
    /// is the larger, whichever instance captured them. `None` for records without rows, or
    /// journaled before it was captured.
    #[serde(default)]
    pub lsn: Option<u64>,
}

impl TxnRecord {
    /// A record captured now.
    pub fn new(session: u64, xid: Option<i64>) -> TxnRecord {
        TxnRecord {
            session,
            xid,
            captured_at_us: now_us(),
            settings: Vec::new(),
            changes: Vec::new(),
            lsn: None,
        }
    }
}

/// One row-level change of a source table (the rule's `source`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    #[serde(with = "table_serde")]
    pub table: TableName,
    pub op: ChangeOp,
}

/// What happened to the row. `in_filter` is the rule's `where` evaluated on the row by the
/// capture (its trailing boolean column); `None` when it was not captured, and the applier then
/// evaluates the rule's `where` itself on the secondary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChangeOp {
    /// An inserted or updated row, every source column. A row outside the rule's `where` is not
    /// the target's: its key is deleted there (an UPDATE may have moved it out).
    Upsert {
        row: Row,
        in_filter: Option<bool>,
        /// What the primary's statement did to the row, which the target's upsert should do
        /// too; `None` when either is right (INSERT ... ON CONFLICT) or it was not recorded.
        #[serde(default)]
        effect: Option<Effect>,
    },
    /// A deleted row: its key columns (rule key order). Skipped when `in_filter == Some(false)`.
    Delete { key: Row, in_filter: Option<bool> },
    /// An UPDATE that changed key columns: delete the old key, then as [`ChangeOp::Upsert`].
    UpdateKey {
        old_key: Row,
        row: Row,
        in_filter: Option<bool>,
    },
    /// TRUNCATE of the source: every row the rule owns on the target is deleted.
    Truncate,
    /// `mirror = "statements"`: the write rewritten to the target, replayed with the client's
    /// parameters (column names empty; a type OID of 0 lets the secondary infer the type).
    Statement {
        sql: String,
        params: Row,
        /// The primary's CommandComplete tag (`UPDATE 3`), to compare the replay's with;
        /// `None` in records journaled before it was kept.
        #[serde(default)]
        tag: Option<String>,
    },
}

/// What a captured write did to its row on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// A plain INSERT: the row was new.
    Inserted,
    /// An UPDATE: the row was there.
    Updated,
}

/// Named values, as the primary returned them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Row {
    /// Source column names.
    pub columns: Vec<String>,
    pub values: Vec<Value>,
}

impl Row {
    pub fn new() -> Row {
        Row::default()
    }

    /// An empty row with room for `n` columns.
    pub fn with_capacity(n: usize) -> Row {
        Row {
            columns: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
        }
    }

    /// Adds a column (builder style).
    pub fn with(mut self, column: &str, value: Value) -> Row {
        self.columns.push(column.to_string());
        self.values.push(value);
        self
    }

    /// The value of a column.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.columns
            .iter()
            .position(|c| c == column)
            .map(|i| &self.values[i])
    }
}

/// One value in the wire format the primary sent it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// The type OID of the column on the primary (RowDescription).
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: u8,
    /// `None` is NULL.
    pub bytes: Option<Bytes>,
}

impl Value {
    /// A text-format value.
    pub fn text(type_oid: u32, s: &str) -> Value {
        Value {
            type_oid,
            format: 0,
            bytes: Some(Bytes::copy_from_slice(s.as_bytes())),
        }
    }

    /// A binary-format value.
    pub fn binary(type_oid: u32, b: impl Into<Bytes>) -> Value {
        Value {
            type_oid,
            format: 1,
            bytes: Some(b.into()),
        }
    }

    pub fn null(type_oid: u32) -> Value {
        Value {
            type_oid,
            format: 0,
            bytes: None,
        }
    }

    /// The value for logs and unredacted divergence records: text as is, binary in hex.
    pub fn display(&self) -> String {
        match (&self.bytes, self.format) {
            (None, _) => "NULL".into(),
            (Some(b), 0) => String::from_utf8_lossy(b).into_owned(),
            (Some(b), _) => {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                format!("\\x{hex}")
            }
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A table name in serialized records: `{"schema": .., "name": ..}`.
mod table_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::rules::TableName;

    #[derive(Serialize, Deserialize)]
    struct Name {
        schema: String,
        name: String,
    }

    pub fn serialize<S: Serializer>(t: &TableName, s: S) -> Result<S::Ok, S::Error> {
        Name {
            schema: t.schema.clone(),
            name: t.name.clone(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TableName, D::Error> {
        let n = Name::deserialize(d)?;
        Ok(TableName::new(&n.schema, &n.name))
    }
}
