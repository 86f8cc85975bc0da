//! The plan of each statement: what the capture does with it, decided once per analysis.
//!
//! A statement's plan says how its write of a migrated table reaches the mirror (row images
//! from a RETURNING spliced in, a TRUNCATE, a replayed rewrite, a COPY through a temporary
//! table) or why it cannot (an `unmirrored_write`), whether it controls the transaction, and
//! whether it may write anything at all (reads after it in its transaction stay on the
//! primary). The capture in the session carries the plan out; it reads no SQL of its own.

use std::ops::Range;
use std::sync::Arc;

use super::classify::WriteOp;
use super::keywords::{SessionOp, TxControl};
use super::{lex, Analysis, Capture, Kind, StatementInfo, StatementRewrite};
use crate::rules::{MirrorMode, RuleSet, TableName};

/// How one statement's write of a migrated table reaches the mirror.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Mirror {
    /// It writes no mirrored table.
    #[default]
    None,
    /// `rows`: its row images come back in the RETURNING spliced in.
    Rows(Arc<Capture>),
    /// `rows`: TRUNCATE of the table; the applier deletes the rule's rows on the target.
    Truncate(TableName),
    /// `statements`: the write rewritten to the target, replayed with the client's parameters.
    Replay { table: TableName, sql: Arc<str> },
    /// `rows`: COPY FROM into the table. In the simple protocol its rows go through a temporary
    /// table and a captured INSERT ... SELECT (`name` is the table name's bytes in the text);
    /// elsewhere it is unmirrored, for `reason`.
    CopyFrom {
        table: TableName,
        name: Range<usize>,
        reason: String,
    },
    /// It writes a migrated table and cannot be mirrored: why.
    Unmirrored(String),
}

/// What the capture does with one statement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub mirror: Mirror,
    /// Transaction control, followed in the session's buffer of changes when it succeeds.
    pub tx: Option<TxControl>,
    /// It may write something (anything but a read of migrated tables, transaction control or a
    /// setting): later reads in its transaction stay on the primary.
    pub may_write: bool,
}

impl Plan {
    /// Why the statement's write is not mirrored, when it writes a migrated table but is not
    /// (a COPY is, in the simple protocol only).
    pub fn unmirrored(&self) -> Option<&str> {
        match &self.mirror {
            Mirror::Unmirrored(reason) | Mirror::CopyFrom { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// The write leaves changes for the mirror (row images, a TRUNCATE, a replay).
    pub fn changes(&self) -> bool {
        matches!(
            self.mirror,
            Mirror::Rows(_) | Mirror::Truncate(_) | Mirror::Replay { .. }
        )
    }
}

/// The plans of every statement of `a` under `rules`; `text` is the analyzed text.
pub fn attach(a: &mut Analysis, text: &str, rules: &RuleSet) {
    for s in &mut a.statements {
        s.plan = plan(s, text, rules);
    }
}

fn plan(s: &StatementInfo, text: &str, rules: &RuleSet) -> Plan {
    Plan {
        mirror: mirror(s, text, rules),
        tx: match &s.kind {
            Kind::Transaction(tc) => Some(tc.clone()),
            _ => None,
        },
        may_write: s.may_write
            || !matches!(s.kind, Kind::Read | Kind::Transaction(_) | Kind::Session(_)),
    }
}

fn mode(rules: &RuleSet, table: &TableName) -> Option<MirrorMode> {
    rules.get(table).map(|r| r.mirror)
}

fn mirror(s: &StatementInfo, text: &str, rules: &RuleSet) -> Mirror {
    match &s.kind {
        Kind::Write => write(s, text, rules),
        Kind::Ddl => Mirror::Unmirrored("DDL on a migrated table".into()),
        Kind::Unparsed if may_write(text.get(s.text.clone()).unwrap_or(text)) => {
            Mirror::Unmirrored(format!(
                "the statement could not be parsed: {}",
                s.note.clone().unwrap_or_default()
            ))
        }
        _ => Mirror::None,
    }
}

fn write(s: &StatementInfo, text: &str, rules: &RuleSet) -> Mirror {
    if let Some(c) = &s.capture {
        return Mirror::Rows(c.clone());
    }
    let mirrored: Vec<_> = s
        .writes
        .iter()
        .filter(|w| mode(rules, &w.table).is_some_and(|m| m != MirrorMode::Off))
        .collect();
    let Some(first) = mirrored.first() else {
        return Mirror::None;
    };
    let reason = || {
        s.note
            .clone()
            .unwrap_or_else(|| format!("{:?} of a migrated table is not mirrored", first.op))
    };
    let [w] = mirrored.as_slice() else {
        return Mirror::Unmirrored(reason());
    };
    match (mode(rules, &w.table), w.op, &s.statement_rewrite) {
        (Some(MirrorMode::Statements), _, Some(r)) => replay(&w.table, r),
        (Some(MirrorMode::Rows), WriteOp::Truncate, _) => Mirror::Truncate(w.table.clone()),
        (Some(MirrorMode::Rows), WriteOp::CopyFrom, _) if s.writes.len() == 1 => {
            copy_from(s, text, &w.table, reason())
        }
        _ => Mirror::Unmirrored(reason()),
    }
}

/// A `statements` write: its rewrite, replayed; a rewrite that may not be exact is logged.
fn replay(table: &TableName, r: &StatementRewrite) -> Mirror {
    for warning in &r.warnings {
        tracing::warn!(table = %table, warning = %warning,
            "a replayed statement may not reproduce the primary's rows");
    }
    Mirror::Replay {
        table: table.clone(),
        sql: Arc::from(r.sql.as_str()),
    }
}

/// A `rows` COPY FROM: where its table name is in the client's text (for the simple protocol's
/// temporary table) and `reason`, why it is unmirrored elsewhere; unmirrored when the name
/// cannot be found.
fn copy_from(s: &StatementInfo, text: &str, table: &TableName, reason: String) -> Mirror {
    match copy_target(text.get(s.text.clone()).unwrap_or_default()) {
        Some(name) => Mirror::CopyFrom {
            table: table.clone(),
            name: s.text.start + name.start..s.text.start + name.end,
            reason,
        },
        None => Mirror::Unmirrored(reason),
    }
}

/// An unparsed statement may write unless it starts as a plain read does.
fn may_write(text: &str) -> bool {
    let b = text.as_bytes();
    let start = lex::skip_blank(b, 0);
    let word: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase();
    !matches!(
        word.as_str(),
        "select" | "table" | "values" | "show" | "explain"
    )
}

/// Whether a statement is `COPY name [(columns)] FROM STDIN ...`: the server then waits for the
/// client's data.
pub fn copy_from_stdin(text: &str) -> bool {
    let Some(name) = copy_target(text) else {
        return false;
    };
    let rest = text[name.end..].to_ascii_lowercase();
    let rest = match rest.trim_start().strip_prefix('(') {
        Some(cols) => cols.split_once(')').map_or("", |(_, r)| r).to_string(),
        None => rest,
    };
    let mut words = rest.split_whitespace();
    words.next() == Some("from") && words.next().is_some_and(|w| w.starts_with("stdin"))
}

/// The byte range of the table name in `COPY name ...` (comments and quoted names allowed).
pub fn copy_target(text: &str) -> Option<Range<usize>> {
    let b = text.as_bytes();
    let i = lex::skip_blank(b, 0);
    if !text.get(i..i + 4)?.eq_ignore_ascii_case("copy") {
        return None;
    }
    let start = lex::skip_blank(b, i + 4);
    Some(start..lex::qualified_name_end(b, start)?)
}

/// What a Query's statements add up to, for running them in the session.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct QueryPlan {
    /// Some statement leaves changes for the mirror.
    pub changes: bool,
    /// A change whose statement does not return the transaction id with its rows (TRUNCATE, a
    /// replay): `pg_current_xact_id()` is asked for behind it.
    pub needs_xid: bool,
    /// A BEGIN comes before any change.
    pub begins: bool,
    /// Other transaction control (savepoints, a second BEGIN, ROLLBACK, ...).
    pub other_tx: bool,
    /// The first COMMIT, by statement index.
    pub commit_at: Option<usize>,
}

impl Analysis {
    /// What the statements add up to (see [`QueryPlan`]).
    pub fn query_plan(&self) -> QueryPlan {
        let mut q = QueryPlan::default();
        for (i, s) in self.statements.iter().enumerate() {
            match (&s.plan.mirror, &s.plan.tx) {
                (Mirror::Rows(_), _) => q.changes = true,
                (Mirror::Truncate(_) | Mirror::Replay { .. }, _) => {
                    q.changes = true;
                    q.needs_xid = true;
                }
                (_, Some(TxControl::Commit)) if q.commit_at.is_none() => q.commit_at = Some(i),
                (_, Some(TxControl::Begin(_))) if !q.changes => q.begins = true,
                (_, Some(_)) => q.other_tx = true,
                _ => {}
            }
        }
        q
    }

    /// Whether a statement before statement `k` leaves changes for the mirror.
    pub fn changes_before(&self, k: usize) -> bool {
        self.statements[..k].iter().any(|s| s.plan.changes())
    }

    /// The text may write something pgbridge cannot see into (see [`Plan::may_write`]); a text
    /// the parser never read (no migrated table, no transaction control) counts as one that may.
    pub fn may_write(&self) -> bool {
        self.is_unrelated() || self.statements.iter().any(|s| s.plan.may_write)
    }

    /// DISCARD or DEALLOCATE: prepared statements (pgbridge's own too) are dropped.
    pub fn drops_prepared(&self) -> bool {
        self.statements.iter().any(|s| {
            matches!(
                s.kind,
                Kind::Session(SessionOp::Discard { .. } | SessionOp::Deallocate(_))
            )
        })
    }

    /// The plan of a one-statement text (a prepared statement's); `None` for several.
    pub fn single_plan(&self) -> Option<&Plan> {
        match self.statements.as_slice() {
            [s] => Some(&s.plan),
            _ => None,
        }
    }

    /// The first migrated table the first statement reads (for records about a read).
    pub fn first_read(&self) -> String {
        self.statements
            .first()
            .and_then(|s| s.reads.first())
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    /// The table an unmirrored write of statement `s` is recorded for.
    pub fn unmirrored_table(&self, s: &StatementInfo) -> String {
        s.writes
            .first()
            .map(|w| w.table.to_string())
            .or_else(|| self.seen.first().map(|t| t.to_string()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_from_stdin_is_told_from_other_copies() {
        assert!(copy_from_stdin("COPY bars FROM STDIN"));
        assert!(copy_from_stdin(
            "copy public.bars (a, b) from stdin with (format csv)"
        ));
        assert!(copy_from_stdin("COPY \"Bars\" FROM stdin;"));
        assert!(!copy_from_stdin("COPY bars TO STDOUT"));
        assert!(!copy_from_stdin("COPY bars FROM '/tmp/x'"));
        assert!(!copy_from_stdin("COPY (SELECT 1) TO STDOUT"));
        assert!(!copy_from_stdin("SELECT 1"));
    }

    #[test]
    fn the_copy_target_is_found_in_the_clients_text() {
        let find = |t: &str| copy_target(t).map(|r| t[r].to_string());
        assert_eq!(find("COPY bars FROM STDIN").as_deref(), Some("bars"));
        assert_eq!(
            find("  copy public.bars (a, b) FROM STDIN").as_deref(),
            Some("public.bars")
        );
        assert_eq!(
            find("/* load */ COPY -- the table\n \"Odd\"\"Name\".\"x\" FROM STDIN").as_deref(),
            Some("\"Odd\"\"Name\".\"x\"")
        );
        assert_eq!(find("SELECT 1"), None);
        assert_eq!(find("COPY (SELECT 1) TO STDOUT"), None);
    }

    #[test]
    fn unparsed_statements_may_write_unless_they_read() {
        assert!(!may_write("  /* c */ SELECT f(x"));
        assert!(!may_write("table t"));
        assert!(may_write("DO $$ BEGIN END $$"));
        assert!(may_write("MERGE INTO t"));
    }
}
