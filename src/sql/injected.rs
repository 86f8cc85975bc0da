//! The statements pgbridge itself sends on a client's session to the primary: its own
//! transaction around an autocommit write, the transaction id, and a refusal raised in a
//! COMMIT's place (the COPY detour through a temporary table is [`super::copy`]'s). The
//! client sees none of their replies; the capture decides when each is sent.

use crate::rules::quote_literal;

/// The open transaction's id (an xid8), for resolving it with `pg_xact_status` if pgbridge dies
/// before its outcome is journaled.
pub const XID: &str = "SELECT pg_current_xact_id()";
pub const BEGIN: &str = "BEGIN";
pub const COMMIT: &str = "COMMIT";
pub const ROLLBACK: &str = "ROLLBACK";
/// An empty query: its only reply is the ReadyForQuery the client is owed.
pub const NOTHING: &str = "";

/// `sql` followed by [`XID`] in the same Query: the id arrives without a round trip of its own.
pub fn with_xid(sql: &str) -> String {
    format!("{sql}\n;{XID}")
}

/// `sql` run inside a transaction pgbridge begins (and commits once the changes are journaled).
pub fn in_transaction(sql: &str) -> String {
    format!("{BEGIN};\n{sql}")
}

/// A statement that fails with `sqlstate` and `message` (a COMMIT pgbridge refuses fails in
/// its place, in the client's extended-protocol batch, and the transaction rolls back).
pub fn raise(sqlstate: &str, message: &str) -> String {
    format!(
        "DO $pgbridge$ BEGIN RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = {}; END $pgbridge$",
        quote_literal(sqlstate),
        quote_literal(message)
    )
}

/// `SELECT set_config($1, $2, false), ...` for `n` settings: each setting's name and value as
/// parameters (`$1`, `$2` the first), at session level.
pub fn set_config(n: usize) -> String {
    let calls: Vec<String> = (0..n)
        .map(|i| format!("set_config(${}, ${}, false)", 2 * i + 1, 2 * i + 2))
        .collect();
    format!("SELECT {}", calls.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_quoted() {
        assert_eq!(
            raise("53100", "it's full"),
            "DO $pgbridge$ BEGIN RAISE EXCEPTION USING ERRCODE = '53100', MESSAGE = 'it''s full'; END $pgbridge$"
        );
        assert_eq!(
            in_transaction(&with_xid("X")),
            "BEGIN;\nX\n;SELECT pg_current_xact_id()"
        );
    }
}
