//! Reads one rule file into [`Rule`]s, reporting every problem with its position.
//!
//! serde stops at the first error; a DBA fixing a file wants all of them at once. So the file is
//! read into toml's spanned document tree and walked by hand: each key and value keeps its span,
//! and each problem becomes `FILE:LINE:COL: message`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::compare::parse_compare;
use super::reconcile::parse_reconcile;
use super::sections::{parse_key, parse_translate, string_map};
use super::{check, split_identifier, MirrorMode, Problem, ReadSource, Rule, TableName};
use crate::config::line_col;

const TABLE_KEYS: &[&str] = &[
    "source",
    "target",
    "key",
    "where",
    "reads",
    "mirror",
    "columns",
    "values",
    "translate",
    "compare",
    "reconcile",
];

/// A rule as read from its file, with the spans later checks point at.
#[derive(Debug, Clone)]
pub struct ParsedRule {
    pub rule: Rule,
    pub file: PathBuf,
    /// The file's text, to turn spans into lines and columns.
    pub text: std::sync::Arc<str>,
    pub source_span: Range<usize>,
    /// Spans by dotted key (`target`, `where`, `key.symbol`, `columns.close`, `values.timeframe`,
    /// `compare.ignore_columns.updated_at`, `reconcile.metrics.sum(volume)`).
    pub spans: Vec<(String, Range<usize>)>,
}

impl ParsedRule {
    /// The rule read from table `t` of the file, with the spans of its values.
    fn new(ctx: &FileCtx, t: &DeTable, rule: Rule, source_span: Range<usize>) -> ParsedRule {
        ParsedRule {
            rule,
            file: ctx.file.to_path_buf(),
            text: std::sync::Arc::from(ctx.text),
            source_span,
            spans: collect_spans(t),
        }
    }

    /// A problem at the value of a dotted key, or at `source` when the key is not in the file.
    pub fn problem(&self, key: &str, message: impl Into<String>) -> Problem {
        let span = self
            .spans
            .iter()
            .find(|(k, _)| k == key)
            .map_or(self.source_span.clone(), |(_, s)| s.clone());
        let (line, col) = line_col(&self.text, span.start);
        Problem {
            file: self.file.clone(),
            line,
            col,
            message: message.into(),
        }
    }
}

/// The spans of every value in a rule, by dotted key.
fn collect_spans(t: &DeTable) -> Vec<(String, Range<usize>)> {
    let mut out = Vec::new();
    for (k, v) in t.iter() {
        out.push((k.get_ref().to_string(), v.span()));
        match v.get_ref() {
            DeValue::Table(inner) => {
                for (ik, iv) in inner.iter() {
                    let at = format!("{}.{}", k.get_ref(), ik.get_ref());
                    // `compare.ignore_columns.updated_at`
                    for item in iv.get_ref().as_array().into_iter().flatten() {
                        if let Some(s) = item.get_ref().as_str() {
                            out.push((format!("{at}.{s}"), item.span()));
                        }
                    }
                    out.push((at, iv.span()));
                }
            }
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let Some(s) = item.get_ref().as_str() {
                        out.push((format!("{}.{s}", k.get_ref()), item.span()));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Collects the problems of one file.
pub struct FileCtx<'t> {
    pub file: &'t Path,
    pub text: &'t str,
    pub problems: Vec<Problem>,
}

impl FileCtx<'_> {
    pub fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }
}

/// Parses the text of one rule file. Returns the rules that could be read and every problem.
pub fn parse_file(file: &Path, text: &str) -> (Vec<ParsedRule>, Vec<Problem>) {
    let mut ctx = FileCtx {
        file,
        text,
        problems: Vec::new(),
    };
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            ctx.problem(span, e.message().trim().to_string());
            return (Vec::new(), ctx.problems);
        }
    };
    let mut rules = Vec::new();
    for (key, value) in doc.get_ref().iter() {
        if key.get_ref() != "table" {
            ctx.problem(
                key.span(),
                format!("unknown key `{}`; expected `[[table]]`", key.get_ref()),
            );
            continue;
        }
        rules.extend(parse_tables(&mut ctx, value));
    }
    (rules, ctx.problems)
}

/// The `[[table]]` array: a rule from each entry that reads as one.
fn parse_tables(ctx: &mut FileCtx, value: &Spanned<DeValue>) -> Vec<ParsedRule> {
    let DeValue::Array(items) = value.get_ref() else {
        ctx.problem(
            value.span(),
            "`table` must be an array of tables: write `[[table]]`",
        );
        return Vec::new();
    };
    let mut rules = Vec::new();
    for item in items.iter() {
        match item.get_ref() {
            DeValue::Table(t) => rules.extend(parse_rule(ctx, t, item.span())),
            other => ctx.problem(
                item.span(),
                format!("`table` entries must be tables, found {}", other.type_str()),
            ),
        }
    }
    rules
}

pub(super) type Entry<'a, 'i> = (
    &'a Spanned<std::borrow::Cow<'i, str>>,
    &'a Spanned<DeValue<'i>>,
);

pub(super) fn field<'a, 'i>(t: &'a DeTable<'i>, key: &str) -> Option<Entry<'a, 'i>> {
    t.get_key_value(key)
}

fn parse_rule(ctx: &mut FileCtx, t: &DeTable, span: Range<usize>) -> Option<ParsedRule> {
    unknown_keys(ctx, t);
    let source = table_name(ctx, t, "source", &span);
    let target = table_name(ctx, t, "target", &span);
    let key = parse_key(ctx, t);
    let filter = string(ctx, t, "where");
    let reads = parse_reads(ctx, t);
    let mirror = parse_mirror(ctx, t, key.is_some());
    let columns = string_map(ctx, t, "columns");
    let values = string_map(ctx, t, "values");
    let translate = parse_translate(ctx, t);
    let compare = parse_compare(ctx, t, key.as_deref());
    let reconcile = parse_reconcile(ctx, t);
    check::rule_offline(ctx, t, &columns, &values, &translate, filter.as_ref());
    let (source, source_span) = source?;
    let (target, _) = target?;
    let (line, _) = line_col(ctx.text, span.start);
    let rule = Rule {
        source,
        target,
        key: key.unwrap_or_default(),
        filter: filter.map(|(f, _)| f),
        reads: reads.unwrap_or(ReadSource::Primary),
        mirror: mirror?,
        columns: columns.into_iter().map(|(s, t, _, _)| (s, t)).collect(),
        values: values.into_iter().map(|(c, v, _, _)| (c, v)).collect(),
        translate: translate
            .into_iter()
            .map(|(c, pairs, _)| (c, pairs))
            .collect(),
        compare,
        reconcile,
        source_columns: None,
        target_columns: None,
        conflict_key: None,
        origin: format!("{}:{}", ctx.file.display(), line),
    };
    Some(ParsedRule::new(ctx, t, rule, source_span))
}

/// Reports the keys of a `[[table]]` that a rule does not have.
fn unknown_keys(ctx: &mut FileCtx, t: &DeTable) {
    for (key, _) in t.iter() {
        if !TABLE_KEYS.contains(&key.get_ref().as_ref()) {
            ctx.problem(
                key.span(),
                format!(
                    "unknown key `{}`; expected one of: {}",
                    key.get_ref(),
                    TABLE_KEYS.join(", ")
                ),
            );
        }
    }
}

fn string(ctx: &mut FileCtx, t: &DeTable, key: &str) -> Option<(String, Range<usize>)> {
    let (_, v) = field(t, key)?;
    match v.get_ref() {
        DeValue::String(s) => Some((s.to_string(), v.span())),
        other => {
            ctx.problem(
                v.span(),
                format!("`{key}` must be a string, found {}", other.type_str()),
            );
            None
        }
    }
}

fn table_name(
    ctx: &mut FileCtx,
    t: &DeTable,
    key: &str,
    rule_span: &Range<usize>,
) -> Option<(TableName, Range<usize>)> {
    if field(t, key).is_none() {
        ctx.problem(
            rule_span.clone(),
            format!("missing `{key}`: every [[table]] needs one"),
        );
        return None;
    }
    let (text, span) = string(ctx, t, key)?;
    match TableName::parse(&text) {
        Some(name) => Some((name, span)),
        None => {
            ctx.problem(
                span,
                format!("`{key}`: `{text}` is not a table name (name or schema.name)"),
            );
            None
        }
    }
}

/// A column name as SQL folds it; reports names that are not identifiers.
pub fn column_name(ctx: &mut FileCtx, text: &str, span: Range<usize>) -> Option<String> {
    match split_identifier(text) {
        Some(mut parts) if parts.len() == 1 => parts.pop(),
        _ => {
            ctx.problem(span, format!("`{text}` is not a column name"));
            None
        }
    }
}

fn parse_reads(ctx: &mut FileCtx, t: &DeTable) -> Option<ReadSource> {
    let (text, span) = string(ctx, t, "reads")?;
    let reads = ReadSource::parse(&text);
    if reads.is_none() {
        ctx.problem(
            span,
            format!("`reads` must be primary, shadow or secondary, not `{text}`"),
        );
    }
    reads
}

fn parse_mirror(ctx: &mut FileCtx, t: &DeTable, has_key: bool) -> Option<MirrorMode> {
    if field(t, "mirror").is_none() {
        return Some(if has_key {
            MirrorMode::Rows
        } else {
            MirrorMode::Statements
        });
    }
    let (text, span) = string(ctx, t, "mirror")?;
    let mode = match text.as_str() {
        "rows" => MirrorMode::Rows,
        "statements" => MirrorMode::Statements,
        "off" => MirrorMode::Off,
        _ => {
            ctx.problem(
                span,
                format!("`mirror` must be rows, statements or off, not `{text}`"),
            );
            return None;
        }
    };
    if mode == MirrorMode::Rows && !has_key {
        ctx.problem(
            span,
            "mirror = \"rows\" needs a `key`: the columns that identify a row",
        );
        return None;
    }
    Some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let (_, problems) = parse_file(Path::new("r.toml"), text);
        problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_rule_is_read_with_its_defaults_and_origin() {
        let text = "\n[[table]]\nsource = \"Bars\"\ntarget = \"new.bars\"\nkey = [\"id\"]\n";
        let (rules, problems) = parse_file(Path::new("r.toml"), text);
        assert!(problems.is_empty(), "{problems:?}");
        let r = &rules[0].rule;
        assert_eq!(r.source, TableName::new("public", "bars"));
        assert_eq!(r.target, TableName::new("new", "bars"));
        assert_eq!((r.reads, r.mirror), (ReadSource::Primary, MirrorMode::Rows));
        assert_eq!(r.origin, "r.toml:2");
        let p = rules[0].problem("key.id", "x");
        assert_eq!((p.line, p.col), (5, 8));
        let (rules, _) = parse_file(
            Path::new("r.toml"),
            "[[table]]\nsource = \"a\"\ntarget = \"b\"\n",
        );
        assert_eq!(rules[0].rule.mirror, MirrorMode::Statements);
    }

    #[test]
    fn the_shape_of_the_file_is_checked_with_positions() {
        assert_eq!(
            problems("table = 1\nother = 2\n"),
            [
                "r.toml:1:9: `table` must be an array of tables: write `[[table]]`",
                "r.toml:2:1: unknown key `other`; expected `[[table]]`",
            ]
        );
        assert_eq!(
            problems("[[table]]\nsource = \"a\"\nsorce = 1\nmirror = \"rows\"\n"),
            [
                "r.toml:3:1: unknown key `sorce`; expected one of: source, target, key, where, reads, mirror, columns, values, translate, compare, reconcile",
                "r.toml:1:1: missing `target`: every [[table]] needs one",
                "r.toml:4:10: mirror = \"rows\" needs a `key`: the columns that identify a row",
            ]
        );
    }
}
