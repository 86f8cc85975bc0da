//! The reconciliation report of a verify (`[table.reconcile]`), without I/O: the aggregate query
//! run per chunk on both sides, the chunks' rows combined per group ([`Groups`]), and the
//! comparison of the two sides into report rows with a status each, written as CSV.
//!
//! Both sides return every value as text under the same pinned session settings, so a value is
//! compared as the number it spells (exactly, as a decimal, when it is one) or else as text.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::rules::{Metric, MetricKind, ReconcileRule};

/// The aggregate query of one chunk: the group expressions then the metrics, each as text,
/// `FROM {from} [WHERE {condition}] GROUP BY 1, .., n`. `from` names the source (a table on the
/// primary, the read view's subquery on the secondary); `condition` is the chunk's key range
/// and the rule's `where`, as the caller builds them.
pub fn aggregate_sql(rec: &ReconcileRule, from: &str, condition: Option<&str>) -> String {
    let groups = rec.group_by.iter().map(|g| format!("({g})::text"));
    let metrics = rec.metrics.iter().map(|m| format!("{}::text", m.sql()));
    let outputs: Vec<String> = groups.chain(metrics).collect();
    let mut sql = format!("SELECT {} FROM {from}", outputs.join(", "));
    if let Some(condition) = condition {
        sql.push_str(&format!(" WHERE {condition}"));
    }
    let ordinals: Vec<String> = (1..=rec.group_by.len()).map(|i| i.to_string()).collect();
    sql.push_str(&format!(" GROUP BY {}", ordinals.join(", ")));
    sql
}

/// A group's values, as text (`None`: NULL).
pub type GroupKey = Vec<Option<String>>;

/// One side's groups, combined over the chunks read so far, in group order.
#[derive(Debug, Clone)]
pub struct Groups {
    kinds: Vec<MetricKind>,
    width: usize,
    groups: BTreeMap<GroupKey, Vec<Option<String>>>,
}

impl Groups {
    /// No groups yet, for the rule's group expressions and metrics.
    pub fn new(rec: &ReconcileRule) -> Groups {
        Groups {
            kinds: rec.metrics.iter().map(|m| m.kind).collect(),
            width: rec.group_by.len(),
            groups: BTreeMap::new(),
        }
    }

    /// Adds the rows of one [`aggregate_sql`] query: each the group values then the metric
    /// values. A group seen before combines with what it had: counts and sums add, minima and
    /// maxima keep the extreme, NULL changes nothing. (A row of another width than the query's
    /// is a caller's bug; its missing values count as NULL.)
    pub fn add(&mut self, rows: Vec<Vec<Option<String>>>) {
        for mut row in rows {
            row.resize(self.width + self.kinds.len(), None);
            let values = row.split_off(self.width);
            match self.groups.get_mut(&row) {
                None => {
                    self.groups.insert(row, values);
                }
                Some(had) => {
                    for ((kind, old), new) in self.kinds.iter().zip(had.iter_mut()).zip(values) {
                        *old = combine(*kind, old.take(), new);
                    }
                }
            }
        }
    }

    /// The combined rows, in the shape [`Groups::add`] takes: adding them to an empty `Groups`
    /// gives these groups again (e.g. after a verify resumed from saved progress).
    pub fn rows(&self) -> Vec<Vec<Option<String>>> {
        (self.groups.iter())
            .map(|(key, values)| key.iter().chain(values).cloned().collect())
            .collect()
    }

    /// The combined metric values of a group, in the rule's metric order.
    pub fn get(&self, group: &[Option<String>]) -> Option<&[Option<String>]> {
        self.groups.get(group).map(|v| v.as_slice())
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// A value as the number it spells: exactly when it is a decimal that fits, else as a float
/// (an exponent, `NaN`, `Infinity`, a decimal beyond 28 digits).
#[derive(Debug, Clone, Copy)]
enum Number {
    Exact(Decimal),
    Float(f64),
}

impl Number {
    fn parse(text: &str) -> Option<Number> {
        let text = text.trim();
        match Decimal::from_str_exact(text) {
            Ok(d) => Some(Number::Exact(d)),
            Err(_) => text.parse::<f64>().ok().map(Number::Float),
        }
    }

    fn float(self) -> f64 {
        match self {
            Number::Exact(d) => d.to_f64().unwrap_or(f64::NAN),
            Number::Float(f) => f,
        }
    }

    /// The sum, exact while both are and it fits.
    fn add(self, other: Number) -> Number {
        let exact = match (self, other) {
            (Number::Exact(a), Number::Exact(b)) => a.checked_add(b),
            _ => None,
        };
        exact.map_or(Number::Float(self.float() + other.float()), Number::Exact)
    }

    /// The difference, exact while both are and it fits.
    fn sub(self, other: Number) -> Number {
        let exact = match (self, other) {
            (Number::Exact(a), Number::Exact(b)) => a.checked_sub(b),
            _ => None,
        };
        exact.map_or(Number::Float(self.float() - other.float()), Number::Exact)
    }

    /// PostgreSQL's order: NaN equals NaN and is above every other number.
    fn cmp(self, other: Number) -> Ordering {
        match (self, other) {
            (Number::Exact(a), Number::Exact(b)) => a.cmp(&b),
            (a, b) => a.float().total_cmp(&b.float()),
        }
    }

    fn abs(self) -> Number {
        match self {
            Number::Exact(d) => Number::Exact(d.abs()),
            Number::Float(f) => Number::Float(f.abs()),
        }
    }

    /// Whether the number is above a threshold; exactly when it is exact and the threshold
    /// spells a decimal that fits.
    fn above(self, limit: f64) -> bool {
        match self {
            Number::Exact(d) => match Decimal::from_str(&limit.to_string()) {
                Ok(l) => d > l,
                Err(_) => self.float() > limit,
            },
            Number::Float(f) => f > limit,
        }
    }

    fn is_zero(self) -> bool {
        match self {
            Number::Exact(d) => d.is_zero(),
            Number::Float(f) => f == 0.0,
        }
    }

    /// As PostgreSQL writes it.
    fn text(self) -> String {
        match self {
            Number::Exact(d) => d.to_string(),
            Number::Float(f) if f.is_nan() => "NaN".into(),
            Number::Float(f) if f.is_infinite() => {
                if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
            }
            Number::Float(f) if f != 0.0 && !(1e-4..1e15).contains(&f.abs()) => exponent_form(f),
            Number::Float(f) => f.to_string(),
        }
    }
}

/// A float as float8's output writes a large or small one: `1.5e+20`, `1e-07`.
fn exponent_form(f: f64) -> String {
    let text = format!("{f:e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.abs())
}

/// Two chunks' values of one metric of one group, combined.
fn combine(kind: MetricKind, a: Option<String>, b: Option<String>) -> Option<String> {
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (a, b) => return a.or(b),
    };
    let numbers = Number::parse(&a).zip(Number::parse(&b));
    let order = || match numbers {
        Some((x, y)) => x.cmp(y),
        None => a.cmp(&b),
    };
    match kind {
        // Counts and sums are numbers; were one not, the first value stands.
        MetricKind::Count | MetricKind::Sum => {
            Some(numbers.map_or(a.clone(), |(x, y)| x.add(y).text()))
        }
        MetricKind::Min if order() == Ordering::Greater => Some(b),
        MetricKind::Max if order() == Ordering::Less => Some(b),
        MetricKind::Min | MetricKind::Max => Some(a),
    }
}

/// How far the two sides of one metric of one group are apart, as the report's CSV says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// No difference.
    Matched,
    /// A difference of at most the metric's `warning`.
    WithinTolerance,
    /// A difference above `warning`, or any difference of a metric without a `warning` (and not
    /// above a `critical`), or of values that are not numbers.
    InvestigationRequired,
    /// A difference above the metric's `critical`.
    Critical,
}

impl Status {
    /// The word of the report's CSV and of verify's results.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Matched => "MATCHED",
            Status::WithinTolerance => "WITHIN_TOLERANCE",
            Status::InvestigationRequired => "INVESTIGATION_REQUIRED",
            Status::Critical => "CRITICAL",
        }
    }
}

/// One line of the report: one metric of one group, on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    pub date: String,
    pub table: String,
    /// The group's values joined with `|`, NULL as empty.
    pub group: String,
    /// The metric as the rule file writes it.
    pub metric: String,
    pub primary_value: Option<String>,
    pub secondary_value: Option<String>,
    /// Primary minus secondary, when both are numbers (an absent value counts as 0).
    pub difference: Option<String>,
    pub status: Status,
}

/// The report of one table: a row per group present on either side and per metric, in group
/// order, then metric order. A group one side lacks has a count of 0 there and no other value.
pub fn report(
    date: &str,
    table: &str,
    rec: &ReconcileRule,
    primary: &Groups,
    secondary: &Groups,
) -> Vec<ReportRow> {
    let keys: BTreeSet<&GroupKey> = primary
        .groups
        .keys()
        .chain(secondary.groups.keys())
        .collect();
    let mut rows = Vec::with_capacity(keys.len() * rec.metrics.len());
    for key in keys {
        let group: Vec<&str> = key.iter().map(|v| v.as_deref().unwrap_or("")).collect();
        for (i, metric) in rec.metrics.iter().enumerate() {
            let primary_value = side_value(primary, key, i, metric);
            let secondary_value = side_value(secondary, key, i, metric);
            let (difference, status) = compare(metric, &primary_value, &secondary_value);
            rows.push(ReportRow {
                date: date.to_string(),
                table: table.to_string(),
                group: group.join("|"),
                metric: metric.text.clone(),
                primary_value,
                secondary_value,
                difference,
                status,
            });
        }
    }
    rows
}

/// One side's value of a metric of a group; a count of 0 when the side lacks the group.
fn side_value(side: &Groups, key: &GroupKey, i: usize, metric: &Metric) -> Option<String> {
    match side.get(key) {
        Some(values) => values.get(i).cloned().flatten(),
        None if metric.kind == MetricKind::Count => Some("0".into()),
        None => None,
    }
}

/// The difference of the two sides' values and its status under the metric's thresholds.
fn compare(metric: &Metric, p: &Option<String>, s: &Option<String>) -> (Option<String>, Status) {
    let number = |v: &Option<String>| v.as_deref().map(Number::parse);
    let (pn, sn) = match (number(p), number(s)) {
        (None, None) => return (None, Status::Matched),
        (Some(None), _) | (_, Some(None)) if p == s => return (None, Status::Matched),
        (Some(None), _) | (_, Some(None)) => return (None, Status::InvestigationRequired),
        (pn, sn) => (pn.flatten(), sn.flatten()),
    };
    let zero = Number::Exact(Decimal::ZERO);
    let (a, b) = (pn.unwrap_or(zero), sn.unwrap_or(zero));
    // Equal numbers (NaN and NaN, too) match, however each side spells them (1.0 and 1.00).
    if a.cmp(b) == Ordering::Equal {
        return (Some("0".into()), Status::Matched);
    }
    let d = a.sub(b);
    if d.float().is_nan() {
        return (None, Status::InvestigationRequired);
    }
    (Some(d.text()), status(metric, d.abs()))
}

/// The status of an absolute difference.
fn status(metric: &Metric, diff: Number) -> Status {
    if diff.is_zero() {
        return Status::Matched;
    }
    if metric.critical.is_some_and(|c| diff.above(c)) {
        return Status::Critical;
    }
    match metric.warning {
        Some(w) if !diff.above(w) => Status::WithinTolerance,
        _ => Status::InvestigationRequired,
    }
}

/// How many report rows have each status, as verify's result shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    pub matched: u64,
    pub within_tolerance: u64,
    pub investigation_required: u64,
    pub critical: u64,
}

impl StatusCounts {
    /// The counts of a report's rows.
    pub fn of(rows: &[ReportRow]) -> StatusCounts {
        let mut counts = StatusCounts::default();
        for row in rows {
            counts.add(row.status, 1);
        }
        counts
    }

    /// Counts `n` more rows of a status (e.g. one table's report after another's).
    pub fn add(&mut self, status: Status, n: u64) {
        let count = match status {
            Status::Matched => &mut self.matched,
            Status::WithinTolerance => &mut self.within_tolerance,
            Status::InvestigationRequired => &mut self.investigation_required,
            Status::Critical => &mut self.critical,
        };
        *count += n;
    }
}

/// The worst status of a report; `None` for a report without rows.
pub fn worst(rows: &[ReportRow]) -> Option<Status> {
    rows.iter().map(|r| r.status).max()
}

/// The report as CSV: a header line, then a line per row, each ended by `\n`; fields quoted as
/// RFC 4180 says when they hold a comma, a quote or a line break. An absent value is empty.
pub fn csv(rows: &[ReportRow]) -> String {
    let mut out =
        String::from("date,table,group,metric,primary_value,secondary_value,difference,status\n");
    for row in rows {
        let fields = [
            Some(row.date.as_str()),
            Some(row.table.as_str()),
            Some(row.group.as_str()),
            Some(row.metric.as_str()),
            row.primary_value.as_deref(),
            row.secondary_value.as_deref(),
            row.difference.as_deref(),
            Some(row.status.as_str()),
        ];
        let quoted: Vec<String> = fields.iter().map(|f| csv_field(f.unwrap_or(""))).collect();
        out.push_str(&quoted.join(","));
        out.push('\n');
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::parse::parse_file;

    /// The rule of docs/RULES.md's example, with a `min` and a `max` besides.
    fn rule() -> ReconcileRule {
        let text = "[[table]]\nsource = \"bars\"\ntarget = \"data_bars\"\nkey = [\"symbol\", \"ts\"]\n\
                    [table.reconcile]\ngroup_by = [\"symbol\", \"date_trunc('day', ts)\"]\n\
                    metrics = [\"count\", \"sum(volume)\", \"sum(close)\", \"min(note)\", \"MAX(\\\"Close\\\")\"]\n\
                    [table.reconcile.thresholds]\ncount = { critical = 0 }\n\
                    \"sum(close)\" = { warning = 100, critical = 1000 }\n";
        let (mut rules, problems) = parse_file(Path::new("r.toml"), text);
        assert!(problems.is_empty(), "{problems:?}");
        rules.remove(0).rule.reconcile.unwrap()
    }

    fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_string)).collect()
    }

    fn groups(rec: &ReconcileRule, chunks: &[&[&[Option<&str>]]]) -> Groups {
        let mut g = Groups::new(rec);
        for chunk in chunks {
            g.add(chunk.iter().map(|r| row(r)).collect());
        }
        g
    }

    #[test]
    fn the_aggregate_query_gives_every_output_as_text() {
        let rec = rule();
        assert_eq!(
            aggregate_sql(
                &rec,
                "public.bars",
                Some("symbol >= 'A' AND (symbol = 'DXY')")
            ),
            "SELECT (symbol)::text, (date_trunc('day', ts))::text, count(*)::text, \
             sum(volume)::text, sum(close)::text, min(note)::text, max(\"Close\")::text \
             FROM public.bars WHERE symbol >= 'A' AND (symbol = 'DXY') GROUP BY 1, 2"
        );
        let mut one = rec.clone();
        one.group_by.truncate(1);
        one.metrics.truncate(1);
        assert_eq!(
            aggregate_sql(&one, "(SELECT * FROM data_bars) AS pgbridge_src", None),
            "SELECT (symbol)::text, count(*)::text FROM (SELECT * FROM data_bars) AS pgbridge_src \
             GROUP BY 1"
        );
    }

    #[test]
    fn chunks_combine_per_metric_kind() {
        let rec = rule();
        let (a, d) = (Some("DXY"), Some("2024-01-02 00:00:00+00"));
        let g = groups(
            &rec,
            &[
                &[&[
                    a,
                    d,
                    Some("2"),
                    Some("10"),
                    Some("0.1"),
                    Some("b"),
                    Some("9.5"),
                ]],
                &[
                    &[a, d, Some("3"), None, Some("0.2"), Some("a"), Some("10")],
                    &[None, d, Some("1"), Some("1"), Some("1"), None, None],
                ],
                &[&[
                    a,
                    d,
                    Some("1"),
                    Some("5"),
                    Some("1.5e+20"),
                    Some("c"),
                    Some("-1"),
                ]],
            ],
        );
        assert_eq!(g.len(), 2);
        assert_eq!(
            g.get(&row(&[a, d])).unwrap(),
            row(&[
                Some("6"),
                Some("15"),
                Some("1.5e+20"),
                Some("a"),
                Some("10")
            ])
        );
        // NULL groups are groups; NULL values change nothing.
        assert_eq!(
            g.get(&row(&[None, d])).unwrap(),
            row(&[Some("1"), Some("1"), Some("1"), None, None])
        );
        let exact = groups(
            &rec,
            &[
                &[&[a, d, Some("1"), None, Some("0.1")]],
                &[&[a, d, Some("1"), None, Some("0.2")]],
            ],
        );
        assert_eq!(exact.get(&row(&[a, d])).unwrap()[2].as_deref(), Some("0.3"));
        let mut again = Groups::new(&rec);
        again.add(g.rows());
        assert_eq!(again.rows(), g.rows());
    }

    #[test]
    fn extremes_compare_as_numbers_when_both_are() {
        assert_eq!(
            combine(MetricKind::Min, Some("10".into()), Some("9".into())).as_deref(),
            Some("9")
        );
        assert_eq!(
            combine(MetricKind::Max, Some("10".into()), Some("9".into())).as_deref(),
            Some("10")
        );
        assert_eq!(
            combine(MetricKind::Max, Some("NaN".into()), Some("1e300".into())).as_deref(),
            Some("NaN")
        );
        assert_eq!(
            combine(MetricKind::Min, Some("b".into()), Some("a".into())).as_deref(),
            Some("a")
        );
        assert_eq!(
            combine(MetricKind::Sum, Some("1e300".into()), Some("1".into())).as_deref(),
            Some("1e+300")
        );
        assert_eq!(
            combine(MetricKind::Sum, Some("NaN".into()), Some("1".into())).as_deref(),
            Some("NaN")
        );
        assert_eq!(
            combine(MetricKind::Count, None, Some("4".into())).as_deref(),
            Some("4")
        );
    }

    fn one_group(values: &[Option<&str>]) -> (ReconcileRule, Groups) {
        let rec = rule();
        let mut r = vec![Some("DXY"), Some("2024-01-02")];
        r.extend(values);
        let g = groups(&rec, &[&[&r]]);
        (rec, g)
    }

    /// The status and difference of `sum(close)` (warning 100, critical 1000) for two values.
    fn close(p: &str, s: &str) -> (Option<String>, Status) {
        let (rec, primary) = one_group(&[Some("1"), None, Some(p)]);
        let (_, secondary) = one_group(&[Some("1"), None, Some(s)]);
        let rows = report("2024-01-03", "bars", &rec, &primary, &secondary);
        (rows[2].difference.clone(), rows[2].status)
    }

    #[test]
    fn statuses_follow_the_thresholds_at_their_boundaries() {
        let at = |d: &str, s: Status| (Some(d.to_string()), s);
        assert_eq!(close("10.50", "10.5"), at("0", Status::Matched));
        assert_eq!(close("110.5", "10.5"), at("100.0", Status::WithinTolerance));
        assert_eq!(
            close("10.5", "110.5"),
            at("-100.0", Status::WithinTolerance)
        );
        assert_eq!(
            close("110.5000001", "10.5"),
            at("100.0000001", Status::InvestigationRequired)
        );
        assert_eq!(
            close("1010.5", "10.5"),
            at("1000.0", Status::InvestigationRequired)
        );
        assert_eq!(close("1010.6", "10.5"), at("1000.1", Status::Critical));
        assert_eq!(close("1e300", "1"), at("1e+300", Status::Critical));
        assert_eq!(close("1e-07", "0"), at("1e-07", Status::WithinTolerance));
        assert_eq!(close("NaN", "NaN"), at("0", Status::Matched));
        assert_eq!(close("NaN", "1"), (None, Status::InvestigationRequired));
    }

    #[test]
    fn count_with_critical_zero_and_metrics_without_thresholds() {
        let (rec, primary) = one_group(&[Some("5"), Some("7"), None, Some("a"), Some("3")]);
        let (_, secondary) = one_group(&[Some("4"), Some("7.0"), None, Some("b"), Some("3.00")]);
        let rows = report("2024-01-03", "bars", &rec, &primary, &secondary);
        let shown: Vec<_> = (rows.iter())
            .map(|r| (r.metric.as_str(), r.difference.as_deref(), r.status))
            .collect();
        assert_eq!(
            shown,
            [
                ("count", Some("1"), Status::Critical),
                ("sum(volume)", Some("0"), Status::Matched),
                ("sum(close)", None, Status::Matched),
                ("min(note)", None, Status::InvestigationRequired),
                ("MAX(\"Close\")", Some("0"), Status::Matched),
            ]
        );
        assert_eq!(rows[0].group, "DXY|2024-01-02");
        assert_eq!(worst(&rows), Some(Status::Critical));
        assert_eq!(
            StatusCounts::of(&rows),
            StatusCounts {
                matched: 3,
                within_tolerance: 0,
                investigation_required: 1,
                critical: 1
            }
        );
        assert_eq!(worst(&[]), None);
    }

    #[test]
    fn a_group_on_one_side_only_counts_zero_on_the_other() {
        let rec = rule();
        let primary = groups(
            &rec,
            &[&[&[
                Some("A"),
                None,
                Some("2"),
                Some("30"),
                Some("1.5"),
                Some("x"),
                Some("4"),
            ]]],
        );
        let secondary = groups(
            &rec,
            &[&[&[Some("B"), None, Some("1"), Some("8"), None, None, None]]],
        );
        let rows = report("2024-01-03", "bars", &rec, &primary, &secondary);
        let shown: Vec<_> = (rows.iter())
            .map(|r| {
                let v = |v: &Option<String>| v.clone().unwrap_or_default();
                format!(
                    "{} {} {}/{} {} {}",
                    r.group,
                    r.metric,
                    v(&r.primary_value),
                    v(&r.secondary_value),
                    v(&r.difference),
                    r.status.as_str()
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                "A| count 2/0 2 CRITICAL",
                "A| sum(volume) 30/ 30 INVESTIGATION_REQUIRED",
                "A| sum(close) 1.5/ 1.5 WITHIN_TOLERANCE",
                "A| min(note) x/  INVESTIGATION_REQUIRED",
                "A| MAX(\"Close\") 4/ 4 INVESTIGATION_REQUIRED",
                "B| count 0/1 -1 CRITICAL",
                "B| sum(volume) /8 -8 INVESTIGATION_REQUIRED",
                "B| sum(close) /  MATCHED",
                "B| min(note) /  MATCHED",
                "B| MAX(\"Close\") /  MATCHED",
            ]
        );
    }

    #[test]
    fn statuses_serialize_as_the_csv_words() {
        let words = serde_json::to_string(&[
            Status::Matched,
            Status::WithinTolerance,
            Status::InvestigationRequired,
            Status::Critical,
        ])
        .unwrap();
        assert_eq!(
            words,
            r#"["MATCHED","WITHIN_TOLERANCE","INVESTIGATION_REQUIRED","CRITICAL"]"#
        );
        assert_eq!(
            Status::InvestigationRequired.as_str(),
            "INVESTIGATION_REQUIRED"
        );
    }

    #[test]
    fn the_csv_quotes_as_rfc_4180_says() {
        let row = ReportRow {
            date: "2024-01-03".into(),
            table: "public.bars".into(),
            group: "A, \"B\"|line\nbreak".into(),
            metric: "sum(close)".into(),
            primary_value: Some("1.5".into()),
            secondary_value: None,
            difference: Some("1.5".into()),
            status: Status::WithinTolerance,
        };
        let mut cr = row.clone();
        cr.group = "a\rb".into();
        cr.status = Status::Matched;
        assert_eq!(
            csv(&[row, cr]),
            "date,table,group,metric,primary_value,secondary_value,difference,status\n\
             2024-01-03,public.bars,\"A, \"\"B\"\"|line\nbreak\",sum(close),1.5,,1.5,WITHIN_TOLERANCE\n\
             2024-01-03,public.bars,\"a\rb\",sum(close),1.5,,1.5,MATCHED\n"
        );
        assert_eq!(
            csv(&[]),
            "date,table,group,metric,primary_value,secondary_value,difference,status\n"
        );
    }
}
