//! `[table.reconcile]`: the business view of a verify, a per-group report of aggregates of the
//! source (a row count, sums, extremes) compared between the primary and the secondary.
//!
//! Verify reads a table chunk by chunk, so only aggregates that combine across chunks are
//! allowed: counts and sums add, minima and maxima keep the extreme; an average does not.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::check::parse_expression;
use super::parse::{field, FileCtx};
use super::{quote_ident, split_identifier};

const RECONCILE_KEYS: &[&str] = &["group_by", "metrics", "thresholds"];
const THRESHOLD_KEYS: &[&str] = &["warning", "critical"];

/// A rule's `[table.reconcile]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileRule {
    /// Source expressions that group the report's rows, as written.
    pub group_by: Vec<String>,
    /// The aggregates compared group by group, in the file's order.
    pub metrics: Vec<Metric>,
}

/// How a metric is computed, and so how chunks' values combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Count,
    Sum,
    Min,
    Max,
}

impl MetricKind {
    /// The aggregate's SQL name.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Count => "count",
            MetricKind::Sum => "sum",
            MetricKind::Min => "min",
            MetricKind::Max => "max",
        }
    }
}

/// One entry of `metrics`, with the thresholds `thresholds` gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// As written in the file (`sum(volume)`): the report names the metric so.
    pub text: String,
    pub kind: MetricKind,
    /// The source column aggregated, folded as SQL folds it; `None` for `count` and `count(*)`.
    pub column: Option<String>,
    /// An absolute difference above this is `INVESTIGATION_REQUIRED`; at most, within tolerance.
    pub warning: Option<f64>,
    /// An absolute difference above this is `CRITICAL`.
    pub critical: Option<f64>,
}

impl Metric {
    /// The metric's SQL over the source's columns: `count(*)`, `sum("Close")`.
    pub fn sql(&self) -> String {
        let arg = self.column.as_deref().map_or("*".into(), quote_ident);
        format!("{}({arg})", self.kind.as_str())
    }
}

impl ReconcileRule {
    /// For `rules check`: `reconcile (2 groups, 3 metrics)`.
    pub fn summary(&self) -> String {
        format!(
            "reconcile ({} groups, {} metrics)",
            self.group_by.len(),
            self.metrics.len()
        )
    }
}

/// Reads a metric's text: `count`, or `count`, `sum`, `min` or `max` of `*` (count only) or of
/// one plain column name. The message says why anything else is refused.
fn parse_metric(text: &str) -> Result<(MetricKind, Option<String>), String> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("count") {
        return Ok((MetricKind::Count, None));
    }
    let shape = "metrics are count, count(*), count(col), sum(col), min(col) or max(col)";
    let Some((name, arg)) = trimmed
        .strip_suffix(')')
        .and_then(|t| t.split_once('('))
        .map(|(n, a)| (n.trim().to_lowercase(), a.trim()))
    else {
        return Err(format!("`{text}`: {shape}"));
    };
    let kind = match name.as_str() {
        "count" => MetricKind::Count,
        "sum" => MetricKind::Sum,
        "min" => MetricKind::Min,
        "max" => MetricKind::Max,
        "avg" => {
            return Err(format!(
                "`{text}`: an average does not combine across chunks: use sum({arg}) and count"
            ))
        }
        _ => return Err(format!("`{text}`: {shape}")),
    };
    if arg == "*" && kind == MetricKind::Count {
        return Ok((kind, None));
    }
    match split_identifier(arg) {
        Some(mut parts) if parts.len() == 1 && !arg.is_empty() => Ok((kind, parts.pop())),
        _ => Err(format!(
            "`{text}`: `{arg}` is not a column name; {shape} of one plain column"
        )),
    }
}

/// Reads `[table.reconcile]`; `None` without the section, or when it cannot be used.
pub(super) fn parse_reconcile(ctx: &mut FileCtx, t: &DeTable) -> Option<ReconcileRule> {
    let (_, v) = field(t, "reconcile")?;
    let DeValue::Table(section) = v.get_ref() else {
        ctx.problem(
            v.span(),
            format!(
                "`reconcile` must be a table: write `[table.reconcile]`, found {}",
                v.get_ref().type_str()
            ),
        );
        return None;
    };
    for (k, _) in section.iter() {
        if !RECONCILE_KEYS.contains(&k.get_ref().as_ref()) {
            let message = format!(
                "unknown key `reconcile.{}`; expected one of: {}",
                k.get_ref(),
                RECONCILE_KEYS.join(", ")
            );
            ctx.problem(k.span(), message);
        }
    }
    let group_by = required_list(ctx, section, "group_by", v.span(), group_expression);
    let mut metrics = required_list(ctx, section, "metrics", v.span(), metric);
    if let Some(metrics) = metrics.as_mut() {
        thresholds(ctx, section, metrics);
    }
    Some(ReconcileRule {
        group_by: group_by?,
        metrics: metrics?,
    })
}

/// A required, non-empty array of strings, each read by `item`; `None` when it is missing or
/// any entry is wrong.
fn required_list<T>(
    ctx: &mut FileCtx,
    section: &DeTable,
    key: &str,
    section_span: Range<usize>,
    item: fn(&mut FileCtx, &str, &Spanned<DeValue>, &[T]) -> Option<T>,
) -> Option<Vec<T>> {
    let Some((_, v)) = field(section, key) else {
        ctx.problem(section_span, format!("`reconcile` needs `{key}`"));
        return None;
    };
    let items = match v.get_ref() {
        DeValue::Array(items) if !items.is_empty() => items,
        other => {
            let found = match other {
                DeValue::Array(_) => "an empty array",
                other => other.type_str(),
            };
            let message =
                format!("`reconcile.{key}` must be a non-empty array of strings, found {found}");
            ctx.problem(v.span(), message);
            return None;
        }
    };
    let mut out = Vec::new();
    let mut complete = true;
    for entry in items.iter() {
        match item(ctx, key, entry, &out) {
            Some(x) => out.push(x),
            None => complete = false,
        }
    }
    complete.then_some(out)
}

/// The text of a string entry of `reconcile.{key}`.
fn entry_text<'a>(ctx: &mut FileCtx, key: &str, entry: &'a Spanned<DeValue>) -> Option<&'a str> {
    match entry.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        other => {
            let message = format!(
                "`reconcile.{key}` entries must be strings, found {}",
                other.type_str()
            );
            ctx.problem(entry.span(), message);
            None
        }
    }
}

/// One `group_by` entry: a SQL expression over the source's columns, not listed before.
fn group_expression(
    ctx: &mut FileCtx,
    key: &str,
    entry: &Spanned<DeValue>,
    listed: &[String],
) -> Option<String> {
    let text = entry_text(ctx, key, entry)?;
    if let Err(e) = parse_expression(text) {
        ctx.problem(entry.span(), format!("`reconcile.group_by`: `{text}`: {e}"));
        return None;
    }
    if listed.iter().any(|l| l == text) {
        let message = format!("`reconcile.group_by`: `{text}` is listed twice");
        ctx.problem(entry.span(), message);
        return None;
    }
    Some(text.to_string())
}

/// One `metrics` entry: an aggregate that combines across chunks, not listed before.
fn metric(
    ctx: &mut FileCtx,
    key: &str,
    entry: &Spanned<DeValue>,
    listed: &[Metric],
) -> Option<Metric> {
    let text = entry_text(ctx, key, entry)?;
    let (kind, column) = match parse_metric(text) {
        Ok(parsed) => parsed,
        Err(e) => {
            ctx.problem(entry.span(), format!("`reconcile.metrics`: {e}"));
            return None;
        }
    };
    let m = Metric {
        text: text.to_string(),
        kind,
        column,
        warning: None,
        critical: None,
    };
    if listed.iter().any(|l| l.sql() == m.sql()) {
        let message = format!("`reconcile.metrics`: `{text}` is listed twice");
        ctx.problem(entry.span(), message);
        return None;
    }
    Some(m)
}

/// Reads `[table.reconcile.thresholds]` onto the metrics it names.
fn thresholds(ctx: &mut FileCtx, section: &DeTable, metrics: &mut [Metric]) {
    let Some((_, v)) = field(section, "thresholds") else {
        return;
    };
    let DeValue::Table(table) = v.get_ref() else {
        let message = format!(
            "`reconcile.thresholds` must be a table: write `[table.reconcile.thresholds]`, found {}",
            v.get_ref().type_str()
        );
        ctx.problem(v.span(), message);
        return;
    };
    for (k, val) in table.iter() {
        let name = k.get_ref().as_ref();
        let Some(m) = metrics.iter_mut().find(|m| names_metric(name, m)) else {
            let listed: Vec<&str> = metrics.iter().map(|m| m.text.as_str()).collect();
            let message = format!(
                "`reconcile.thresholds`: `{name}` is not one of the metrics: {}",
                listed.join(", ")
            );
            ctx.problem(k.span(), message);
            continue;
        };
        (m.warning, m.critical) = threshold(ctx, name, val);
    }
}

/// Whether a key of `thresholds` names the metric: as written, or as the same aggregate.
fn names_metric(key: &str, m: &Metric) -> bool {
    key == m.text
        || parse_metric(key).is_ok_and(|(kind, column)| kind == m.kind && column == m.column)
}

/// One metric's `{ warning = .., critical = .. }`.
fn threshold(ctx: &mut FileCtx, name: &str, v: &Spanned<DeValue>) -> (Option<f64>, Option<f64>) {
    let DeValue::Table(t) = v.get_ref() else {
        let message = format!(
            "`reconcile.thresholds.\"{name}\"` must be a table like {{ warning = 1, critical = 10 }}, found {}",
            v.get_ref().type_str()
        );
        ctx.problem(v.span(), message);
        return (None, None);
    };
    let (mut warning, mut critical) = (None, None);
    for (k, val) in t.iter() {
        let level = k.get_ref().as_ref();
        match level {
            "warning" => warning = limit(ctx, name, level, val),
            "critical" => critical = limit(ctx, name, level, val),
            _ => ctx.problem(
                k.span(),
                format!(
                    "unknown key `{level}` in `reconcile.thresholds.\"{name}\"`; expected one of: {}",
                    THRESHOLD_KEYS.join(", ")
                ),
            ),
        }
    }
    if let (Some(w), Some(c)) = (warning, critical) {
        if w > c {
            let message =
                format!("`reconcile.thresholds.\"{name}\"`: warning ({w}) is above critical ({c})");
            ctx.problem(v.span(), message);
        }
    }
    (warning, critical)
}

/// A threshold: a finite number of at least 0, integer or float.
fn limit(ctx: &mut FileCtx, name: &str, level: &str, v: &Spanned<DeValue>) -> Option<f64> {
    let parsed = match v.get_ref() {
        DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .ok()
            .map(|i| i as f64),
        _ => None,
    };
    match parsed {
        Some(x) if x.is_finite() && x >= 0.0 => Some(x),
        _ => {
            let message = format!(
                "`reconcile.thresholds.\"{name}\".{level}` must be a finite number of at least 0"
            );
            ctx.problem(v.span(), message);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::parse::parse_file;

    const HEAD: &str =
        "[[table]]\nsource = \"bars\"\ntarget = \"data_bars\"\nkey = [\"symbol\", \"ts\"]\n";

    fn problems(section: &str) -> Vec<String> {
        let text = format!("{HEAD}{section}");
        let (_, problems) = parse_file(Path::new("r.toml"), &text);
        problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn the_documented_section_is_read_onto_the_rule() {
        let text = format!(
            "{HEAD}[table.reconcile]\n\
             group_by = [\"symbol\", \"date_trunc('day', ts)\"]\n\
             metrics = [\"count\", \"SUM(volume)\", \"sum(close)\", \"max(\\\"Close\\\")\"]\n\
             [table.reconcile.thresholds]\n\
             count = {{ critical = 0 }}\n\
             \"sum(close)\" = {{ warning = 100, critical = 1000.5 }}\n\
             \"sum(volume)\" = {{ warning = 1e3 }}\n"
        );
        let (rules, problems) = parse_file(Path::new("r.toml"), &text);
        assert!(problems.is_empty(), "{problems:?}");
        let rec = rules[0].rule.reconcile.as_ref().unwrap();
        assert_eq!(rec.group_by, ["symbol", "date_trunc('day', ts)"]);
        let shape: Vec<_> = (rec.metrics.iter())
            .map(|m| (m.text.as_str(), m.sql(), m.warning, m.critical))
            .collect();
        assert_eq!(
            shape,
            [
                ("count", "count(*)".to_string(), None, Some(0.0)),
                ("SUM(volume)", "sum(volume)".into(), Some(1000.0), None),
                ("sum(close)", "sum(close)".into(), Some(100.0), Some(1000.5)),
                ("max(\"Close\")", "max(\"Close\")".into(), None, None),
            ]
        );
        assert!(rules[0]
            .rule
            .summary()
            .ends_with(", reconcile (2 groups, 4 metrics)"));
        let p = rules[0].problem("reconcile.metrics.sum(close)", "x");
        assert_eq!((p.line, p.col), (7, 36));
    }

    #[test]
    fn without_the_section_there_is_no_report() {
        let (rules, problems) = parse_file(Path::new("r.toml"), HEAD);
        assert!(problems.is_empty());
        assert!(rules[0].rule.reconcile.is_none());
        assert!(!rules[0].rule.summary().contains("reconcile"));
    }

    #[test]
    fn metrics_are_aggregates_that_combine_across_chunks() {
        let ok = |t: &str| parse_metric(t).unwrap();
        assert_eq!(ok("count"), (MetricKind::Count, None));
        assert_eq!(ok(" Count( * ) "), (MetricKind::Count, None));
        assert_eq!(ok("count(id)"), (MetricKind::Count, Some("id".into())));
        assert_eq!(ok("Min(Ts)"), (MetricKind::Min, Some("ts".into())));
        assert_eq!(ok("max(\"Ts\")"), (MetricKind::Max, Some("Ts".into())));
        assert_eq!(
            parse_metric("avg(close)").unwrap_err(),
            "`avg(close)`: an average does not combine across chunks: use sum(close) and count"
        );
        let shape = "metrics are count, count(*), count(col), sum(col), min(col) or max(col)";
        assert_eq!(
            parse_metric("median(close)").unwrap_err(),
            format!("`median(close)`: {shape}")
        );
        assert_eq!(
            parse_metric("close").unwrap_err(),
            format!("`close`: {shape}")
        );
        for bad in [
            "sum(*)",
            "sum(a + b)",
            "count(distinct id)",
            "sum()",
            "sum(t.a)",
        ] {
            assert!(
                parse_metric(bad)
                    .unwrap_err()
                    .contains("is not a column name"),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_problem_has_its_position() {
        let section =
            "[table.reconcile]\ngroup_by = [\"symbol\", \"date_trunc('day',\", 3, \"symbol\"]\n\
                       metrics = [\"avg(close)\", \"count\", \"count(*)\"]\nlimit = 1\n";
        assert_eq!(
            problems(section),
            [
                "r.toml:8:1: unknown key `reconcile.limit`; expected one of: group_by, metrics, thresholds",
                "r.toml:6:23: `reconcile.group_by`: `date_trunc('day',`: not a valid SQL expression: Expected: an expression, found: EOF",
                "r.toml:6:44: `reconcile.group_by` entries must be strings, found integer",
                "r.toml:6:47: `reconcile.group_by`: `symbol` is listed twice",
                "r.toml:7:12: `reconcile.metrics`: `avg(close)`: an average does not combine across chunks: use sum(close) and count",
                "r.toml:7:35: `reconcile.metrics`: `count(*)` is listed twice",
            ]
        );
        assert_eq!(
            problems("[table.reconcile]\ngroup_by = []\nmetrics = \"count\"\n"),
            [
                "r.toml:6:12: `reconcile.group_by` must be a non-empty array of strings, found an empty array",
                "r.toml:7:11: `reconcile.metrics` must be a non-empty array of strings, found string",
            ]
        );
        assert_eq!(
            problems("[table.reconcile]\nmetrics = [\"count\"]\n"),
            ["r.toml:5:1: `reconcile` needs `group_by`"]
        );
        assert_eq!(
            problems("reconcile = 1\n"),
            ["r.toml:5:13: `reconcile` must be a table: write `[table.reconcile]`, found integer"]
        );
    }

    #[test]
    fn thresholds_name_listed_metrics_with_ordered_limits() {
        let section =
            "[table.reconcile]\ngroup_by = [\"symbol\"]\nmetrics = [\"count\", \"sum(close)\"]\n\
                       [table.reconcile.thresholds]\n\
                       \"sum(volume)\" = { warning = 1 }\n\
                       \"count(*)\" = { critical = -1, warn = 2 }\n\
                       \"SUM(close)\" = { warning = 10, critical = 5.5 }\n";
        assert_eq!(
            problems(section),
            [
                "r.toml:9:1: `reconcile.thresholds`: `sum(volume)` is not one of the metrics: count, sum(close)",
                "r.toml:10:27: `reconcile.thresholds.\"count(*)\".critical` must be a finite number of at least 0",
                "r.toml:10:31: unknown key `warn` in `reconcile.thresholds.\"count(*)\"`; expected one of: warning, critical",
                "r.toml:11:16: `reconcile.thresholds.\"SUM(close)\"`: warning (10) is above critical (5.5)",
            ]
        );
        let section = "[table.reconcile]\ngroup_by = [\"symbol\"]\nmetrics = [\"count\"]\n\
                       thresholds = { count = 3 }\n";
        assert_eq!(
            problems(section),
            ["r.toml:8:24: `reconcile.thresholds.\"count\"` must be a table like { warning = 1, critical = 10 }, found integer"]
        );
    }
}
