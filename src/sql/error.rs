//! Why a statement could not be rewritten: for the secondary, for the capture or for a replay.
//!
//! The analysis never fails as a whole (what cannot be understood is `Kind::Unparsed`); a
//! rewrite that cannot be built leaves its reason, this error's Display, in the statement's
//! `note`, which becomes the `unmirrored_write` divergence or the reason a read stays on the
//! primary.

use super::classify::WriteOp;
use crate::rules::TableName;

/// What could not be rewritten, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// The rule's source columns were never read from the database.
    #[error("the source's columns are unknown: rules were not checked online")]
    SourceColumnsUnknown,
    /// A read of a table whose rule's columns were never read from the database.
    #[error("the columns of `{0}` are unknown: rules were not checked online")]
    ReadColumnsUnknown(TableName),
    /// The rule's `where` (or the client's WHERE, read again) is no valid expression: the
    /// parser's message.
    #[error("{0}")]
    Expression(String),

    // The read rewrite.
    /// Only a plain query can be served by the secondary.
    #[error("only plain queries are served by the secondary")]
    NotAQuery,
    /// The client's text holds the name pgbridge gives its views' placeholders.
    #[error("the statement uses pgbridge's own name {0}")]
    ReservedName(&'static str),
    /// The read asks for rows of the table beyond its rule's `where`.
    #[error(
        "the read of `{0}` is not restricted to its rule's `where`: the secondary holds only \
         the migrated rows"
    )]
    BeyondWhere(TableName),
    #[error("no source table reference could be rewritten")]
    NothingToRewrite,

    // Parsing a text, and a write in general.
    /// The parser rejected the text: its message.
    #[error("{0}")]
    Parse(String),
    /// The parser's statements do not match the text's `;`-separated ones.
    #[error("statement boundaries are ambiguous")]
    AmbiguousBoundaries,
    #[error("the statement could not be tokenized")]
    Untokenized,
    #[error("a statement writing several migrated tables cannot be mirrored")]
    SeveralTables,
    #[error("a write inside a CTE or another statement cannot be mirrored")]
    NestedWrite,

    // The capture (`mirror = "rows"`).
    /// A write other than INSERT, UPDATE and DELETE (TRUNCATE, COPY).
    #[error("{0:?} cannot be captured row by row")]
    NotCapturable(WriteOp),
    #[error("the written table cannot be named in RETURNING")]
    UnnamedTable,
    #[error("not an UPDATE")]
    NotAnUpdate,
    #[error("no SET")]
    NoSet,
    /// The old key's subquery cannot be joined back beside the client's FROM.
    #[error("an UPDATE ... FROM that changes key columns cannot capture the old key")]
    KeyChangeWithFrom,
    /// The old key's columns would come back among the client's own.
    #[error("RETURNING * with a key change cannot capture the old key")]
    KeyChangeReturningAll,
    /// WHERE CURRENT OF belongs to UPDATE and DELETE; the old key's subquery cannot take it.
    #[error("WHERE CURRENT OF with a key change cannot capture the old key")]
    KeyChangeWhereCurrentOf,

    // The replay (`mirror = "statements"`) and the apply statements.
    #[error("only INSERT, UPDATE, DELETE and TRUNCATE can be rewritten; use mirror = \"rows\"")]
    NotReplayable,
    /// A form of INSERT, UPDATE or DELETE the replay cannot put in the target's terms.
    #[error("{0} cannot be rewritten; use mirror = \"rows\"")]
    UnreplayableForm(&'static str),
    #[error("INSERT without a query")]
    InsertWithoutQuery,
    #[error("`{0}` is not a source column")]
    NotASourceColumn(String),
    #[error("key column `{0}` is not a source column")]
    KeyNotASourceColumn(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_messages_say_what_and_why() {
        let t = TableName::new("app", "bars");
        assert_eq!(
            SqlError::ReadColumnsUnknown(t.clone()).to_string(),
            "the columns of `app.bars` are unknown: rules were not checked online"
        );
        assert_eq!(
            SqlError::BeyondWhere(t).to_string(),
            "the read of `app.bars` is not restricted to its rule's `where`: the secondary \
             holds only the migrated rows"
        );
        assert_eq!(
            SqlError::UnreplayableForm("UPDATE ... FROM").to_string(),
            "UPDATE ... FROM cannot be rewritten; use mirror = \"rows\""
        );
        assert_eq!(
            SqlError::NotCapturable(WriteOp::CopyFrom).to_string(),
            "CopyFrom cannot be captured row by row"
        );
        assert_eq!(
            SqlError::ReservedName("pgbridge_view_").to_string(),
            "the statement uses pgbridge's own name pgbridge_view_"
        );
    }
}
