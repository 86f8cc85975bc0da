//! The one entry point the relay calls per statement text: [`Analyzer::analyze`].
//!
//! It follows the live rules (the `ArcSwap` that hot reload swaps), rebuilding the pre-filter and
//! the parsed views once per new rule set. Unrelated statements return a shared analysis without
//! locking or allocating; everything else is computed once per text and rules generation and then
//! served from the LRU.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::cache::Lru;
use super::classify::{self, WriteOp};
use super::keywords::{self, Leading};
use super::prefilter::Prefilter;
use super::read::{self, Views};
use super::splice::{self, Edit, Tok};
use super::{capture, statements, view, Analysis, Kind, StatementInfo};
use crate::rules::{MirrorMode, RuleSet, TableName};

/// What the analyzer derived from one rule set.
struct Snapshot {
    rules: Arc<RuleSet>,
    generation: u64,
    prefilter: Prefilter,
    names: Vec<TableName>,
    views: Views,
}

impl Snapshot {
    fn new(rules: Arc<RuleSet>, generation: u64) -> Snapshot {
        let names: Vec<TableName> = rules.rules().iter().map(|r| r.source.clone()).collect();
        let prefilter = Prefilter::new(names.iter().map(|n| n.name.as_str()));
        let mut views = HashMap::new();
        for (i, rule) in rules.rules().iter().enumerate() {
            if let Some(v) = view::read_view(rule) {
                views.insert(rule.source.clone(), (i, v));
            }
        }
        Snapshot {
            rules,
            generation,
            prefilter,
            names,
            views,
        }
    }
}

/// Classifies and rewrites statement texts under the current rules, with a cache.
pub struct Analyzer {
    live: Arc<ArcSwap<RuleSet>>,
    snapshot: ArcSwap<Snapshot>,
    generations: AtomicU64,
    cache: Mutex<Lru>,
    other: Arc<Analysis>,
}

impl Analyzer {
    /// Follows the rules in `live`; caches up to `capacity` statement texts.
    pub fn new(live: Arc<ArcSwap<RuleSet>>, capacity: usize) -> Analyzer {
        let snapshot = Snapshot::new(live.load_full(), 0);
        Analyzer {
            live,
            snapshot: ArcSwap::from_pointee(snapshot),
            generations: AtomicU64::new(0),
            cache: Mutex::new(Lru::new(capacity)),
            other: Arc::new(Analysis::default()),
        }
    }

    /// Everything pgbridge needs to know about one statement text (one Query message, or the
    /// query of one Parse message). Never fails: what cannot be understood is `Kind::Unparsed`.
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        let snap = self.current();
        if snap.prefilter.is_clear(sql)
            && !keywords::may_be_leading(sql)
            && !has_more_statements(sql)
        {
            return self.other.clone();
        }
        if let Ok(mut cache) = self.cache.lock() {
            if let Some(hit) = cache.get(sql, snap.generation) {
                return hit;
            }
        }
        let analysis = Arc::new(analyze_uncached(sql, &snap));
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(sql, snap.generation, analysis.clone());
        }
        analysis
    }

    /// The analysis without the pre-filter or the cache (for benchmarks and tests).
    pub fn analyze_uncached(&self, sql: &str) -> Analysis {
        analyze_uncached(sql, &self.current())
    }

    /// The rules the analyzer currently applies.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.current().rules.clone()
    }

    fn current(&self) -> Arc<Snapshot> {
        let snap = self.snapshot.load_full();
        let live = self.live.load();
        if Arc::ptr_eq(&snap.rules, &live) {
            return snap;
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let fresh = Arc::new(Snapshot::new(live.clone(), generation));
        self.snapshot.store(fresh.clone());
        fresh
    }
}

/// Is there a second statement after a `;`? (Cheap and conservative: a `;` in a string counts.)
fn has_more_statements(sql: &str) -> bool {
    match memchr::memchr(b';', sql.as_bytes()) {
        Some(i) => !sql[i + 1..].trim().is_empty(),
        None => false,
    }
}

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
fn analyze_uncached(sql: &str, snap: &Snapshot) -> Analysis {
    let seen: Vec<TableName> = snap
        .prefilter
        .seen(sql)
        .into_iter()
        .map(|i| snap.names[i].clone())
        .collect();
    let tokens = Tokens {
        sql,
        toks: std::cell::OnceCell::new(),
    };
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
    let mut analysis = Analysis {
        seen,
        ..Analysis::default()
    };
    let stmts = match parsed {
        Ok(stmts) if stmts.len() == ranges.len() => stmts,
        Ok(_) => {
            analysis.parse_error = Some("statement boundaries are ambiguous".into());
            Vec::new()
        }
        Err(e) => {
            analysis.parse_error = Some(e.to_string());
            Vec::new()
        }
    };
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
    let kind = match (&leading, stmt) {
        (Some(Leading::Session(s)), _) => Kind::Session(s.clone()),
        (_, Statement::Explain { analyze: false, .. }) => Kind::Other,
        _ if !found.writes.is_empty() => Kind::Write,
        _ if classify::is_ddl(stmt) && !seen_tables(&sql[text.clone()], snap).is_empty() => {
            Kind::Ddl
        }
        _ if !found.reads.is_empty() => Kind::Read,
        _ => Kind::Other,
    };
    let mut info = StatementInfo::new(kind, text);
    info.reads = found.reads;
    info.others = found.others;
    info.writes = found.writes;
    info.may_write = found.may_write;
    match info.kind {
        Kind::Read => match read::rewrite(sql, stmt, &snap.views, &info.reads) {
            Ok(r) => info.read_rewrite = Some(r),
            Err(e) => info.note = Some(e),
        },
        Kind::Write => write_rewrites(sql, stmt, toks, range, snap, &mut info, edits),
        Kind::Ddl if info.reads.is_empty() => {
            info.reads = seen_tables(&sql[info.text.clone()], snap)
        }
        _ => {}
    }
    info
}

fn seen_tables(sql: &str, snap: &Snapshot) -> Vec<TableName> {
    snap.prefilter
        .seen(sql)
        .into_iter()
        .map(|i| snap.names[i].clone())
        .collect()
}

/// The token range of the statement to capture (the text's only one when not yet known).
fn capture_range(tokens: &Tokens, range: Option<Range<usize>>) -> Result<Range<usize>, String> {
    match range {
        Some(r) => Ok(r),
        None => splice::statements(tokens.get())
            .into_iter()
            .next()
            .ok_or_else(|| "the statement could not be tokenized".to_string()),
    }
}

fn write_rewrites(
    sql: &str,
    stmt: &Statement,
    tokens: &Tokens,
    range: Option<Range<usize>>,
    snap: &Snapshot,
    info: &mut StatementInfo,
    edits: &mut Vec<Edit>,
) {
    let [write] = info.writes.as_slice() else {
        info.note = Some("a statement writing several migrated tables cannot be mirrored".into());
        return;
    };
    let Some(rule) = snap.rules.get(&write.table) else {
        return;
    };
    if write.nested {
        info.note = Some("a write inside a CTE or another statement cannot be mirrored".into());
        return;
    }
    match rule.mirror {
        MirrorMode::Off => {}
        MirrorMode::Rows => match capture_range(tokens, range)
            .and_then(|r| capture::capture(sql, stmt, write.op, rule, tokens.get(), r))
        {
            Ok((e, c)) => {
                edits.extend(e);
                info.capture = Some(c);
            }
            Err(e) if write.op != WriteOp::Truncate => info.note = Some(e),
            Err(_) => {} // TRUNCATE: the applier runs the rule's truncate statement.
        },
        MirrorMode::Statements => match statements::rewrite(stmt, rule) {
            Ok(mut r) => {
                if let Ok(mut parsed) = Parser::parse_sql(&PostgreSqlDialect {}, &r.sql) {
                    if let Some(text) = parsed
                        .first_mut()
                        .and_then(|s| read::render_with_views(s, &snap.views))
                    {
                        r.sql = text;
                    }
                }
                info.statement_rewrite = Some(r);
            }
            Err(e) => info.note = Some(e),
        },
    }
}
