//! The statements pgbridge itself sends on a client's session to the primary: its own
//! transaction around an autocommit write, the transaction id, the COPY detour through a
//! temporary table, and a refusal raised in a COMMIT's place. The client sees none of their
//! replies; the capture decides when each is sent.

use std::ops::Range;

use crate::rules::{quote_literal, TableName};

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

/// The temporary table the `n`th COPY of a session goes through.
pub fn copy_temp(n: u64) -> String {
    format!("pgbridge_copy_{n}")
}

/// The INSERT ... SELECT that moves a COPY's rows from `temp` into `table` (and whose
/// RETURNING the capture rewrite adds).
pub fn copy_insert(table: &TableName, temp: &str) -> String {
    format!("INSERT INTO {} SELECT * FROM {temp}", table.quoted())
}

/// The client's `COPY table ...` (the table name at `name` in `text`) made to fill `temp`, after
/// creating it like `table` (dropped at commit), and followed by `insert`, the captured
/// INSERT ... SELECT into the table.
pub fn copy_via_temp(
    text: &str,
    name: Range<usize>,
    table: &TableName,
    temp: &str,
    insert: &str,
) -> String {
    let copy = format!("{}{temp}{}", &text[..name.start], &text[name.end..]);
    format!(
        "CREATE TEMP TABLE {temp} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP;\n{copy}\n;{insert}",
        table.quoted()
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_goes_through_its_temporary_table() {
        let t = TableName::new("public", "bars");
        let text = "COPY bars (a, b) FROM STDIN";
        let insert = copy_insert(&t, &copy_temp(2));
        assert_eq!(
            insert,
            "INSERT INTO public.bars SELECT * FROM pgbridge_copy_2"
        );
        assert_eq!(
            copy_via_temp(text, 5..9, &t, "pgbridge_copy_2", "INSERT ..."),
            "CREATE TEMP TABLE pgbridge_copy_2 (LIKE public.bars INCLUDING DEFAULTS) ON COMMIT DROP;\n\
             COPY pgbridge_copy_2 (a, b) FROM STDIN\n;INSERT ..."
        );
    }

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
