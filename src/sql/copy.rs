//! COPY FROM STDIN into a migrated table, as pgbridge runs it on the primary.
//!
//! COPY has no RETURNING, so the client's rows go into a temporary table of the same name
//! first (`pg_temp.derived_data_bars`: an error in the data reads as it would directly, `COPY
//! derived_data_bars, line 2, column high`), and from there into the table with an
//! INSERT ... SELECT whose RETURNING is captured. The temporary table takes the table's
//! defaults but none of its constraints, not even NOT NULL, so that every constraint is checked
//! by that INSERT, inside a savepoint.
//!
//! When the INSERT fails, its error is not the one a COPY gives (it lacks the COPY's line, and
//! the line's text): the savepoint is rolled back and the client's own COPY runs again, into the
//! table itself, with the client's own data (the driver kept it), so that the client gets the
//! primary's own error for its COPY.

use std::ops::Range;

use crate::rules::{quote_ident, TableName};

/// The savepoint the INSERT ... SELECT runs in.
pub const SAVEPOINT: &str = "pgbridge_copy";

/// The temporary table a COPY into `table` goes through: of the same name, so that what the
/// primary says of the COPY names the client's table.
pub fn temp(table: &TableName) -> String {
    format!("pg_temp.{}", quote_ident(&table.name))
}

/// The INSERT ... SELECT that moves a COPY's rows from `temp` into `table` (and whose
/// RETURNING the capture rewrite adds).
pub fn insert(table: &TableName, temp: &str) -> String {
    format!("INSERT INTO {} SELECT * FROM {temp}", table.quoted())
}

/// The statements a COPY runs as, in order (each its own step): the temporary table made (and
/// its NOT NULL constraints dropped, `not_null` naming them), the client's COPY into it (the
/// table name at `name` in `text` replaced), the savepoint, `captured` (the captured
/// INSERT ... SELECT), the savepoint released, the temporary table dropped.
pub fn statements(
    text: &str,
    name: Range<usize>,
    table: &TableName,
    not_null: &[String],
    captured: &str,
) -> Vec<String> {
    let temp = temp(table);
    let mut out = vec![format!(
        "CREATE TABLE {temp} (LIKE {} INCLUDING DEFAULTS)",
        table.quoted()
    )];
    if !not_null.is_empty() {
        let drops: Vec<String> = not_null
            .iter()
            .map(|c| format!("ALTER COLUMN {} DROP NOT NULL", quote_ident(c)))
            .collect();
        out.push(format!("ALTER TABLE {temp} {}", drops.join(", ")));
    }
    out.push(format!(
        "{}{temp}{}",
        &text[..name.start],
        &text[name.end..]
    ));
    out.push(format!("SAVEPOINT {SAVEPOINT}"));
    out.push(captured.to_string());
    out.push(format!("RELEASE SAVEPOINT {SAVEPOINT}"));
    out.push(format!("DROP TABLE {temp}"));
    out
}

/// The client's COPY `text` again, into the table itself: back to before the failed INSERT,
/// the temporary table out of the way (an unqualified name would find it first), the COPY.
pub fn replay(text: &str, table: &TableName) -> [String; 3] {
    [
        format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"),
        format!("DROP TABLE {}", temp(table)),
        text.to_string(),
    ]
}

/// Back to before the INSERT, when a replay that should have failed did not (a conflicting
/// row went away in between): its rows were never captured.
pub fn undo_replay() -> String {
    format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_runs_through_a_temporary_table_of_its_name() {
        let t = TableName::new("public", "bars");
        let text = "COPY bars (a, b) FROM STDIN";
        let sql = statements(text, 5..9, &t, &["a".into()], "INSERT ...");
        assert_eq!(
            sql,
            [
                "CREATE TABLE pg_temp.bars (LIKE public.bars INCLUDING DEFAULTS)",
                "ALTER TABLE pg_temp.bars ALTER COLUMN a DROP NOT NULL",
                "COPY pg_temp.bars (a, b) FROM STDIN",
                "SAVEPOINT pgbridge_copy",
                "INSERT ...",
                "RELEASE SAVEPOINT pgbridge_copy",
                "DROP TABLE pg_temp.bars",
            ]
        );
        assert_eq!(
            insert(&t, &temp(&t)),
            "INSERT INTO public.bars SELECT * FROM pg_temp.bars"
        );
        assert_eq!(
            replay(text, &t),
            [
                "ROLLBACK TO SAVEPOINT pgbridge_copy",
                "DROP TABLE pg_temp.bars",
                "COPY bars (a, b) FROM STDIN"
            ]
        );
    }
}
