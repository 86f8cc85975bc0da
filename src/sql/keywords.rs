//! Transaction control and session state, told apart by their leading keywords.
//!
//! These statements decide how the relay buffers mirrored changes, so they are recognized for
//! every statement, with or without migrated tables, and without the parser: their meaning is in
//! their first words, and some (`PREPARE TRANSACTION`, `COMMIT PREPARED`) are beyond sqlparser.

use super::isolation::Isolation;

/// A transaction control statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxControl {
    /// `BEGIN`, `START TRANSACTION`: with the isolation level it names, if it does.
    Begin(Option<Isolation>),
    Commit,
    Rollback,
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    PrepareTransaction(String),
    CommitPrepared(String),
    RollbackPrepared(String),
}

/// A statement that changes session state the secondary's sessions may need to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOp {
    Set(SetKind),
    /// `RESET name`, lower case; `None` for `RESET ALL`.
    Reset(Option<String>),
    /// `DISCARD ALL` (`all`), or `DISCARD PLANS`, `SEQUENCES`, `TEMP`.
    Discard {
        all: bool,
    },
    /// `PREPARE name AS ...`: the statement's reads and writes are those of its body.
    Prepare(String),
    /// `DEALLOCATE name`; `None` for `DEALLOCATE ALL`.
    Deallocate(Option<String>),
}

/// What a `SET` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetKind {
    /// `SET [SESSION] name ...`: a setting of the session (lower case), which a session on the
    /// secondary serving its reads follows.
    Setting(String),
    /// `SET ROLE`, `SET SESSION AUTHORIZATION`: who the session is changes.
    Role,
    /// `SET TRANSACTION ISOLATION LEVEL x`, `SET [LOCAL] transaction_isolation = x`: the open
    /// transaction's level.
    TransactionIsolation(Isolation),
    /// `SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`, `SET SESSION CHARACTERISTICS`: for the
    /// transaction only, or not a setting a read depends on.
    Other,
}

/// What the leading keywords say a statement is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leading {
    Tx(TxControl),
    Session(SessionOp),
}

#[inline]
pub fn starts_with_ignore_case(haystack: &[u8], lower: &[u8]) -> bool {
    haystack.len() >= lower.len()
        && haystack
            .iter()
            .zip(lower)
            .all(|(a, b)| a.to_ascii_lowercase() == *b)
}

/// The words of a statement, past whitespace and comments: keywords lower-cased, quoted names
/// and string literals unquoted.
pub(super) fn words(sql: &str, max: usize) -> Vec<String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() && out.len() < max {
        match b[i] {
            c if c.is_ascii_whitespace() => i += 1,
            b'-' | b'/' if super::lex::comment_end(b, i).is_some() => {
                i = super::lex::comment_end(b, i).unwrap_or(b.len());
            }
            q @ (b'"' | b'\'') => {
                let end = b[i + 1..]
                    .iter()
                    .position(|&c| c == q)
                    .map_or(b.len(), |p| i + 1 + p);
                out.push(sql[i + 1..end].to_string());
                i = end + 1;
            }
            _ => {
                let end = b[i..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))
                    .map_or(b.len(), |p| i + p);
                let end = end.max(i + 1);
                out.push(sql[i..end].to_lowercase());
                i = end;
            }
        }
    }
    out
}

/// Cheap test for the first word: could this be transaction control or session state?
#[inline]
pub fn may_be_leading(sql: &str) -> bool {
    let t = sql.trim_start().as_bytes();
    const FIRST: [&[u8]; 13] = [
        b"begin",
        b"start",
        b"commit",
        b"end",
        b"rollback",
        b"abort",
        b"savepoint",
        b"release",
        b"prepare",
        b"set",
        b"reset",
        b"discard",
        b"deallocate",
    ];
    t.first().is_some_and(|c| b"bBsScCeErRaApPdD/-".contains(c))
        && (t.starts_with(b"/*")
            || t.starts_with(b"--")
            || FIRST.iter().any(|k| starts_with_ignore_case(t, k)))
}

/// Classifies transaction control and session state statements by their first words.
pub fn leading(sql: &str) -> Option<Leading> {
    let w = words(sql, 4);
    let word = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    let name = |i: usize| word(i).to_string();
    use Leading::{Session, Tx};
    use TxControl::*;
    let kind = match (word(0), word(1)) {
        ("begin", _) | ("start", "transaction") => Tx(Begin(super::isolation::named_level(sql))),
        ("commit", "prepared") => Tx(CommitPrepared(name(2))),
        ("rollback", "prepared") => Tx(RollbackPrepared(name(2))),
        ("commit" | "end", _) => Tx(Commit),
        ("rollback" | "abort", "to") => Tx(RollbackTo(if word(2) == "savepoint" {
            name(3)
        } else {
            name(2)
        })),
        ("rollback" | "abort", _) => Tx(Rollback),
        ("savepoint", _) => Tx(Savepoint(name(1))),
        ("release", "savepoint") => Tx(Release(name(2))),
        ("release", _) => Tx(Release(name(1))),
        ("prepare", "transaction") => Tx(PrepareTransaction(name(2))),
        ("prepare", _) => Session(SessionOp::Prepare(name(1))),
        ("set", _) => Session(SessionOp::Set(set_kind(&w, sql))),
        ("reset", "all") => Session(SessionOp::Reset(None)),
        ("reset", _) => Session(SessionOp::Reset(Some(name(1)))),
        ("discard", _) => Session(SessionOp::Discard {
            all: word(1) == "all",
        }),
        ("deallocate", "all") => Session(SessionOp::Deallocate(None)),
        ("deallocate", "prepare") if word(2) == "all" => Session(SessionOp::Deallocate(None)),
        ("deallocate", "prepare") => Session(SessionOp::Deallocate(Some(name(2)))),
        ("deallocate", _) => Session(SessionOp::Deallocate(Some(name(1)))),
        _ => return None,
    };
    Some(kind)
}

/// What `SET` changes, from its first words.
fn set_kind(w: &[String], sql: &str) -> SetKind {
    use super::isolation::{named_level, set_value};
    let word = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    let level = |l: Option<Isolation>| l.map_or(SetKind::Other, SetKind::TransactionIsolation);
    match (word(1), word(2)) {
        ("role" | "authorization", _) => SetKind::Role,
        ("transaction", "isolation") => level(named_level(sql)),
        ("transaction_isolation", _) | ("local" | "session", "transaction_isolation") => {
            level(set_value(sql))
        }
        // The session's default level, as `SET default_transaction_isolation` would set it.
        ("session", "characteristics") if named_level(sql).is_some() => {
            SetKind::Setting("default_transaction_isolation".into())
        }
        ("session" | "local", "role" | "authorization") => SetKind::Role,
        ("local" | "transaction" | "characteristics" | "constraints" | "", _) => SetKind::Other,
        ("session", "transaction" | "characteristics" | "constraints" | "") => SetKind::Other,
        ("session", name) | (name, _) => SetKind::Setting(name.to_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_recognized() {
        use TxControl::*;
        let tx = |s: &str| match leading(s) {
            Some(Leading::Tx(t)) => t,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(tx("BEGIN"), Begin(None));
        assert_eq!(
            tx("  /* c */ start transaction isolation level serializable"),
            Begin(Some(Isolation::Serializable))
        );
        assert_eq!(tx("COMMIT"), Commit);
        assert_eq!(tx("end"), Commit);
        assert_eq!(tx("ROLLBACK"), Rollback);
        assert_eq!(tx("SAVEPOINT sp1"), Savepoint("sp1".into()));
        assert_eq!(tx("RELEASE SAVEPOINT sp1"), Release("sp1".into()));
        assert_eq!(tx("release sp1"), Release("sp1".into()));
        assert_eq!(tx("ROLLBACK TO SAVEPOINT sp1"), RollbackTo("sp1".into()));
        assert_eq!(tx("rollback to \"Sp\""), RollbackTo("Sp".into()));
        assert_eq!(
            tx("PREPARE TRANSACTION 'gid-1'"),
            PrepareTransaction("gid-1".into())
        );
        assert_eq!(
            tx("COMMIT PREPARED 'gid-1'"),
            CommitPrepared("gid-1".into())
        );
        assert_eq!(
            tx("ROLLBACK PREPARED 'gid-1'"),
            RollbackPrepared("gid-1".into())
        );
    }

    #[test]
    fn session_state_is_recognized() {
        use SessionOp::*;
        let s = |sql: &str| match leading(sql) {
            Some(Leading::Session(op)) => op,
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(
            s("SET search_path = x"),
            Set(SetKind::Setting("search_path".into()))
        );
        assert_eq!(s("RESET ALL"), Reset(None));
        assert_eq!(s("reset search_path;"), Reset(Some("search_path".into())));
        assert_eq!(s("DISCARD ALL"), Discard { all: true });
        assert_eq!(s("discard plans"), Discard { all: false });
        assert_eq!(s("PREPARE q1 AS SELECT 1"), Prepare("q1".into()));
        assert_eq!(s("DEALLOCATE q1"), Deallocate(Some("q1".into())));
        assert_eq!(s("DEALLOCATE PREPARE ALL"), Deallocate(None));
        assert_eq!(leading("SELECT 1"), None);
        assert_eq!(leading("settle"), None);
        assert!(may_be_leading("  begin") && !may_be_leading("SELECT 1"));
    }

    #[test]
    fn set_statements_name_their_setting() {
        let set = |sql: &str| match leading(sql) {
            Some(Leading::Session(SessionOp::Set(k))) => k,
            other => panic!("{sql}: {other:?}"),
        };
        let named = |n: &str| SetKind::Setting(n.into());
        assert_eq!(
            set("SET extra_float_digits = 3"),
            named("extra_float_digits")
        );
        assert_eq!(set("set session TimeZone to 'UTC'"), named("timezone"));
        assert_eq!(set("SET search_path=app,public"), named("search_path"));
        assert_eq!(set("SET \"TimeZone\" TO 'UTC'"), named("timezone"));
        assert_eq!(set("/* why */ SET work_mem = '4MB'"), named("work_mem"));
        assert_eq!(set("SET LOCAL work_mem = '1MB'"), SetKind::Other);
        assert_eq!(
            set("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            SetKind::TransactionIsolation(Isolation::Serializable)
        );
        assert_eq!(
            set("SET LOCAL transaction_isolation = 'repeatable read'"),
            SetKind::TransactionIsolation(Isolation::RepeatableRead)
        );
        assert_eq!(set("SET TRANSACTION READ ONLY"), SetKind::Other);
        assert_eq!(
            set("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
            named("default_transaction_isolation")
        );
        assert_eq!(
            set("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            SetKind::Other
        );
        assert_eq!(set("SET CONSTRAINTS ALL DEFERRED"), SetKind::Other);
        assert_eq!(set("SET ROLE app"), SetKind::Role);
        assert_eq!(set("set session role app"), SetKind::Role);
        assert_eq!(set("SET SESSION AUTHORIZATION app"), SetKind::Role);
        assert_eq!(set("SET LOCAL ROLE app"), SetKind::Role);
    }
}
