//! Reads of migrated tables: where each one is served, and serving or comparing it on the
//! secondary.
//!
//! - [`route`]: the pure decision for one statement (primary, shadow or secondary).
//! - [`flags`]: each table's read source, changed at runtime through the safety gate, audited.
//! - [`secondary`]: reads served by the secondary on the session's own connection there.
//! - [`shadow`]: reads served by the primary and compared on the secondary, in the background.

pub mod flags;
pub mod route;
pub mod secondary;
pub mod shadow;

pub use flags::{FlagError, FlagOptions, Flags, MirrorProbe, Preview, ReadFlags, TableState};
pub use route::{route, Route, SharedTables};

/// The largest answer kept to compare, or served from the secondary (rows, in bytes): larger
/// reads are served by the primary as they stream, and not compared.
pub const MAX_COMPARED_BYTES: usize = 8 << 20;
