//! The uncached path: parse a text, classify each statement and build its rewrites.
//!
//! Runs once per statement text and rules generation; the [`super::Analyzer`] caches the result.
//! A single statement is parsed without a separate tokenization; the tokens with byte positions
//! are computed only for texts with several statements or for a capture's splice.

use std::ops::Range;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::analyzer::{has_more_statements, Snapshot};
use super::classify::{self, Found, WriteOp};
use super::keywords::{self, Leading};
use super::read;
use super::splice::{self, Edit, Tok};
use super::{capture, statements, Analysis, Kind, SqlError, StatementInfo, StatementRewrite};
use crate::rules::{MirrorMode, Rule, TableName};

/// The text's tokens, computed only when needed: a single statement that is not captured needs
/// none beyond the parser's own.
struct Tokens<'a> {
    sql: &'a str,
    toks: std::cell::OnceCell<Vec<Tok>>,
}

impl Tokens<'_> {
    fn get(&self) -> &[Tok] {
        self.toks
            .get_or_init(|| splice::tokens(self.sql).unwrap_or_default())
    }
}

/// The full analysis of a text: parse, classify and rewrite each statement.
pub(super) fn analyze_uncached(sql: &str, snap: &Snapshot) -> Analysis {
    let seen = seen_tables(sql, snap);
    let tokens = Tokens {
        sql,
        toks: std::cell::OnceCell::new(),
    };
    let Parsed { ranges, stmts } = parse(sql, &tokens);
    let mut analysis = Analysis {
        seen,
        ..Analysis::default()
    };
    let stmts = stmts.unwrap_or_else(|e| {
        analysis.parse_error = Some(e.to_string());
        Vec::new()
    });
    let mut edits = Vec::new();
    for (i, range) in ranges.into_iter().enumerate() {
        let text = match &range {
            Some(r) => splice::text_range(tokens.get(), r),
            None => whole_statement(sql),
        };
        let info = match stmts.get(i) {
            Some(stmt) => statement(sql, stmt, &tokens, range, text, snap, &mut edits),
            None => unparsed(&sql[text.clone()], text, &analysis.seen),
        };
        analysis.statements.push(info);
    }
    if !edits.is_empty() {
        analysis.capture_sql = Some(splice::apply(sql, &mut edits));
    }
    analysis
}

/// A text's statements as the parser read them, and where each is in the text.
struct Parsed {
    /// The token range of each statement; `None` for a text holding one (its range is computed
    /// only if a capture needs it).
    ranges: Vec<Option<Range<usize>>>,
    /// One for each range: `Err` when the parser rejected the text, or its statements do not
    /// match the text's.
    stmts: Result<Vec<Statement>, SqlError>,
}

fn parse(sql: &str, tokens: &Tokens) -> Parsed {
    let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql);
    let single = matches!(&parsed, Ok(s) if s.len() == 1) && !has_more_statements(sql);
    let ranges: Vec<Option<Range<usize>>> = if single {
        vec![None]
    } else {
        splice::statements(tokens.get())
            .into_iter()
            .map(Some)
            .collect()
    };
    let stmts = match parsed {
        Ok(stmts) if stmts.len() == ranges.len() => Ok(stmts),
        Ok(_) => Err(SqlError::AmbiguousBoundaries),
        Err(e) => Err(SqlError::Parse(e.to_string())),
    };
    Parsed { ranges, stmts }
}

/// The bytes of a text holding one statement, without surrounding space and the final `;`.
fn whole_statement(sql: &str) -> Range<usize> {
    let start = sql.len() - sql.trim_start().len();
    let trimmed = sql.trim_end();
    let end = trimmed
        .strip_suffix(';')
        .map_or(trimmed, str::trim_end)
        .len();
    start..end.max(start)
}

fn unparsed(text: &str, range: Range<usize>, seen: &[TableName]) -> StatementInfo {
    match keywords::leading(text) {
        Some(Leading::Tx(t)) => StatementInfo::new(Kind::Transaction(t), range),
        Some(Leading::Session(s)) if seen.is_empty() => StatementInfo::new(Kind::Session(s), range),
        _ if seen.is_empty() => StatementInfo::new(Kind::Other, range),
        _ => {
            let mut info = StatementInfo::new(Kind::Unparsed, range);
            info.reads = seen.to_vec();
            info
        }
    }
}

fn statement(
    sql: &str,
    stmt: &Statement,
    toks: &Tokens,
    range: Option<Range<usize>>,
    text: Range<usize>,
    snap: &Snapshot,
    edits: &mut Vec<Edit>,
) -> StatementInfo {
    let leading = keywords::leading(&sql[text.clone()]);
    if let Some(Leading::Tx(t)) = leading {
        return StatementInfo::new(Kind::Transaction(t), text);
    }
    let found = classify::walk(stmt, &snap.rules);
    let kind = kind(&sql[text.clone()], leading, stmt, &found, snap);
    let mut info = StatementInfo::new(kind, text);
    info.reads = found.reads;
    info.others = found.others;
    info.writes = found.writes;
    info.may_write = found.may_write;
    let rewritten = match info.kind {
        Kind::Read => read_rewrite(sql, stmt, snap, &mut info),
        Kind::Write => write_rewrites(sql, stmt, toks, range, snap, &mut info, edits),
        Kind::Ddl if info.reads.is_empty() => {
            info.reads = seen_tables(&sql[info.text.clone()], snap);
            Ok(())
        }
        _ => Ok(()),
    };
    // Why a rewrite the statement needs is missing: reported with it.
    if let Err(e) = rewritten {
        info.note = Some(e.to_string());
    }
    info
}

/// What a parsed statement (`text`, not transaction control) is, from its leading words and
/// what the walk found.
fn kind(
    text: &str,
    leading: Option<Leading>,
    stmt: &Statement,
    found: &Found,
    snap: &Snapshot,
) -> Kind {
    match (leading, stmt) {
        (Some(Leading::Session(s)), _) => Kind::Session(s),
        (_, Statement::Explain { analyze: false, .. }) => Kind::Other,
        _ if !found.writes.is_empty() => Kind::Write,
        _ if classify::is_ddl(stmt) && !seen_tables(text, snap).is_empty() => Kind::Ddl,
        _ if !found.reads.is_empty() => Kind::Read,
        _ => Kind::Other,
    }
}

/// A read's rewrite for the secondary.
fn read_rewrite(
    sql: &str,
    stmt: &Statement,
    snap: &Snapshot,
    info: &mut StatementInfo,
) -> Result<(), SqlError> {
    let (r, covered) = read::rewrite(sql, stmt, &snap.views, &info.reads, &snap.rules)?;
    info.read_rewrite = Some(r);
    info.read_params = covered.checks;
    info.read_literal_proof = covered.literal_based;
    info.ordered = matches!(stmt, Statement::Query(q) if q.order_by.is_some());
    Ok(())
}

/// The migrated tables the pre-filter sees in `sql`.
pub(super) fn seen_tables(sql: &str, snap: &Snapshot) -> Vec<TableName> {
    snap.prefilter
        .seen(sql)
        .into_iter()
        .map(|i| snap.names[i].clone())
        .collect()
}

/// The token range of the statement to capture (the text's only one when not yet known).
fn capture_range(tokens: &Tokens, range: Option<Range<usize>>) -> Result<Range<usize>, SqlError> {
    match range {
        Some(r) => Ok(r),
        None => splice::statements(tokens.get())
            .into_iter()
            .next()
            .ok_or(SqlError::Untokenized),
    }
}

/// A write's rewrites under its rule's mirror mode.
fn write_rewrites(
    sql: &str,
    stmt: &Statement,
    tokens: &Tokens,
    range: Option<Range<usize>>,
    snap: &Snapshot,
    info: &mut StatementInfo,
    edits: &mut Vec<Edit>,
) -> Result<(), SqlError> {
    let [write] = info.writes.as_slice() else {
        return Err(SqlError::SeveralTables);
    };
    let Some(rule) = snap.rules.get(&write.table) else {
        return Ok(());
    };
    if write.nested {
        return Err(SqlError::NestedWrite);
    }
    let op = write.op;
    match rule.mirror {
        MirrorMode::Off => {}
        MirrorMode::Rows => {
            let captured = capture_range(tokens, range)
                .and_then(|r| capture::capture(sql, stmt, op, rule, tokens.get(), r));
            match captured {
                Ok((e, c)) => {
                    edits.extend(e);
                    info.capture = Some(std::sync::Arc::new(c));
                }
                Err(_) if op == WriteOp::Truncate => {} // The applier runs the rule's truncate.
                Err(e) => return Err(e),
            }
        }
        MirrorMode::Statements => info.statement_rewrite = Some(replay(stmt, rule, snap)?),
    }
    Ok(())
}

/// The write rewritten to the target for `mirror = "statements"`, with any read of a source
/// table inside it (`INSERT ... SELECT ... FROM source`) reading the target through its view.
fn replay(stmt: &Statement, rule: &Rule, snap: &Snapshot) -> Result<StatementRewrite, SqlError> {
    let mut r = statements::rewrite(stmt, rule)?;
    if let Ok(mut parsed) = Parser::parse_sql(&PostgreSqlDialect {}, &r.sql) {
        if let Some(text) = parsed
            .first_mut()
            .and_then(|s| read::render_with_views(s, &snap.views))
        {
            r.sql = text;
        }
    }
    Ok(r)
}
