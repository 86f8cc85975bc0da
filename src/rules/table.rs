//! A live table's shape as the rules see it (its columns and unique keys), and the checks of a
//! rule against its source and target tables: every column it names exists, its key is unique,
//! every source column has a compatible target column, and the target's NOT NULL columns are
//! fed (and `[table.reconcile]`'s metrics aggregate existing columns). Pure: `live::schema`
//! reads the shape from the catalogs, `live::online` runs the checks.

use super::parse::ParsedRule;
use super::{Metric, MetricKind, Problem, Rule};

/// A column of a live table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type`, e.g. `numeric(18,6)`.
    pub type_name: String,
    /// `pg_type.typcategory`: types of one category convert into each other.
    pub category: char,
    pub not_null: bool,
    pub has_default: bool,
}

/// A live table: its columns and the column sets of its unique indexes.
#[derive(Debug, Clone)]
pub struct TableSchema {
    pub columns: Vec<Column>,
    pub unique_keys: Vec<Vec<String>>,
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The rule against its source table: the columns it names exist, and its key is unique.
pub fn check_source(parsed: &ParsedRule, source: &TableSchema) -> Vec<Problem> {
    let rule = &parsed.rule;
    let mut problems: Vec<Problem> = named_source_columns(rule)
        .filter(|(_, col)| source.column(col).is_none())
        .map(|(section, col)| {
            parsed.problem(
                &format!("{section}.{col}"),
                format!(
                    "column `{col}` does not exist in source table `{}`",
                    rule.source
                ),
            )
        })
        .collect();
    problems.extend(reconcile_problems(parsed, source));
    let unique = source
        .unique_keys
        .iter()
        .any(|k| k.iter().all(|c| rule.key.contains(c)));
    if !rule.key.is_empty() && !unique {
        problems.push(parsed.problem(
            "key",
            format!(
                "key ({}) is not unique on `{}`: no primary key or unique index covers it",
                rule.key.join(", "),
                rule.source
            ),
        ));
    }
    problems
}

/// Every source column the rule names, with the section that names it.
fn named_source_columns(rule: &Rule) -> impl Iterator<Item = (&'static str, &String)> {
    let key = rule.key.iter().map(|k| ("key", k));
    let renamed = rule.columns.iter().map(|(s, _)| ("columns", s));
    let translated = rule.translate.iter().map(|(c, _)| ("translate", c));
    let ignored = (rule.compare.ignore_columns.iter()).map(|c| ("compare.ignore_columns", c));
    key.chain(renamed).chain(translated).chain(ignored)
}

/// The columns of `[table.reconcile]`'s metrics: each exists, and a sum adds numbers (or
/// intervals). Its `group_by` expressions are the verify's to run: they are SQL, not names.
fn reconcile_problems(parsed: &ParsedRule, source: &TableSchema) -> Vec<Problem> {
    let rule = &parsed.rule;
    let metrics = rule.reconcile.iter().flat_map(|r| &r.metrics);
    let problem = |m: &Metric, col: &str| {
        let at = format!("reconcile.metrics.{}", m.text);
        let Some(c) = source.column(col) else {
            let message = format!(
                "`{}`: column `{col}` does not exist in source table `{}`",
                m.text, rule.source
            );
            return Some(parsed.problem(&at, message));
        };
        let adds = c.category == 'N' || c.category == 'T';
        (m.kind == MetricKind::Sum && !adds).then(|| {
            let message = format!(
                "`{}`: column `{col}` is {}; sum needs a number or an interval",
                m.text, c.type_name
            );
            parsed.problem(&at, message)
        })
    };
    metrics
        .filter_map(|m| problem(m, m.column.as_deref()?))
        .collect()
}

/// The rule against its target table: every source column lands in a compatible column, the
/// target's required columns are set, and the target has a unique key for the mirror's upserts.
pub fn check_target(
    parsed: &ParsedRule,
    source: &TableSchema,
    target: &TableSchema,
) -> Vec<Problem> {
    let rule = &parsed.rule;
    let mut problems: Vec<Problem> = (source.columns.iter())
        .filter_map(|col| target_column_problem(parsed, col, target))
        .collect();
    problems.extend(unset_target_columns(parsed, source, target));
    if !rule.key.is_empty() && conflict_key(rule, target).is_none() {
        problems.push(parsed.problem(
            "key",
            format!(
                "({}) does not contain a primary key or unique index of target `{}`: the mirror's upsert needs one",
                rule.target_key().join(", "),
                rule.target
            ),
        ));
    }
    problems
}

/// What is wrong with the target column a source column is stored in, if anything.
fn target_column_problem(
    parsed: &ParsedRule,
    col: &Column,
    target: &TableSchema,
) -> Option<Problem> {
    let rule = &parsed.rule;
    let to = rule.target_column(&col.name);
    let at = if to == col.name {
        "source".to_string()
    } else {
        format!("columns.{}", col.name)
    };
    match target.column(to) {
        None => Some(parsed.problem(
            &at,
            format!(
                "source column `{}` has no column `{to}` in target table `{}`",
                col.name, rule.target
            ),
        )),
        Some(t) if !compatible(col, t) => Some(parsed.problem(
            &at,
            format!(
                "column `{}` is {} on the source but `{to}` is {} on the target",
                col.name, col.type_name, t.type_name
            ),
        )),
        Some(_) => None,
    }
}

/// The smallest unique key of the target within the mapped key plus the `values` columns: the
/// `ON CONFLICT` target of the mirror's upserts.
pub fn conflict_key(rule: &Rule, target: &TableSchema) -> Option<Vec<String>> {
    let key = rule.target_key();
    target
        .unique_keys
        .iter()
        .filter(|k| k.iter().all(|c| key.contains(c)))
        .min_by_key(|k| k.len())
        .cloned()
}

fn compatible(source: &Column, target: &Column) -> bool {
    source.type_name == target.type_name || source.category == target.category
}

fn unset_target_columns(
    parsed: &ParsedRule,
    source: &TableSchema,
    target: &TableSchema,
) -> Vec<Problem> {
    let rule = &parsed.rule;
    let fed = |name: &str| {
        source
            .columns
            .iter()
            .any(|c| rule.target_column(&c.name) == name)
            || rule.values.iter().any(|(v, _)| v == name)
    };
    target
        .columns
        .iter()
        .filter(|c| c.not_null && !c.has_default && !fed(&c.name))
        .map(|c| {
            parsed.problem(
                "target",
                format!(
                    "target column `{}` is NOT NULL without a default, and neither a source column nor `values` sets it",
                    c.name
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::parse::parse_file;

    const RULE: &str = "[[table]]\nsource = \"bars\"\ntarget = \"data_bars\"\nkey = [\"symbol\", \"ts\"]\n\
                        [table.columns]\nclose = \"close_px\"\n[table.values]\ntimeframe = \"'1m'\"\n";

    fn rule() -> ParsedRule {
        let (mut rules, problems) = parse_file(Path::new("r.toml"), RULE);
        assert!(problems.is_empty(), "{problems:?}");
        rules.remove(0)
    }

    fn col(name: &str, type_name: &str, category: char, not_null: bool) -> Column {
        Column {
            name: name.into(),
            type_name: type_name.into(),
            category,
            not_null,
            has_default: false,
        }
    }

    fn table(columns: Vec<Column>, unique_keys: &[&[&str]]) -> TableSchema {
        TableSchema {
            columns,
            unique_keys: (unique_keys.iter())
                .map(|k| k.iter().map(|c| c.to_string()).collect())
                .collect(),
        }
    }

    fn source() -> TableSchema {
        let columns = vec![
            col("symbol", "text", 'S', true),
            col("ts", "timestamp with time zone", 'D', true),
            col("close", "numeric", 'N', false),
        ];
        table(columns, &[&["symbol", "ts"]])
    }

    fn shown(problems: Vec<Problem>) -> Vec<String> {
        problems.iter().map(|p| p.to_string()).collect::<Vec<_>>()
    }

    #[test]
    fn the_source_has_every_named_column_and_a_unique_key() {
        let parsed = rule();
        assert!(check_source(&parsed, &source()).is_empty());
        let mut s = source();
        s.columns.pop();
        s.unique_keys = vec![vec!["symbol".into(), "ts".into(), "close".into()]];
        assert_eq!(
            shown(check_source(&parsed, &s)),
            [
                "r.toml:6:9: column `close` does not exist in source table `bars`",
                "r.toml:4:7: key (symbol, ts) is not unique on `bars`: no primary key or unique index covers it",
            ]
        );
    }

    #[test]
    fn the_reconcile_metrics_aggregate_existing_columns() {
        let text = format!(
            "{RULE}[table.reconcile]\ngroup_by = [\"symbol\"]\n\
             metrics = [\"count\", \"sum(close)\", \"max(ts)\", \"sum(symbol)\", \"min(volume)\"]\n"
        );
        let (rules, problems) = parse_file(Path::new("r.toml"), &text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            shown(check_source(&rules[0], &source())),
            [
                "r.toml:11:46: `sum(symbol)`: column `symbol` is text; sum needs a number or an interval",
                "r.toml:11:61: `min(volume)`: column `volume` does not exist in source table `bars`",
            ]
        );
    }

    #[test]
    fn the_target_takes_every_source_column_and_has_an_upsert_key() {
        let parsed = rule();
        let target = |ts_type: &str, ts_category: char| {
            let columns = vec![
                col("symbol", "text", 'S', true),
                col("ts", ts_type, ts_category, true),
                col("close_px", "double precision", 'N', false),
                col("timeframe", "text", 'S', true),
            ];
            table(
                columns,
                &[
                    &["symbol", "ts", "timeframe", "close_px"],
                    &["symbol", "timeframe", "ts"],
                ],
            )
        };
        let good = target("timestamp with time zone", 'D');
        assert!(check_target(&parsed, &source(), &good).is_empty());
        assert_eq!(
            conflict_key(&parsed.rule, &good),
            Some(vec!["symbol".into(), "timeframe".into(), "ts".into()])
        );
        let mut bad = target("text", 'S');
        bad.columns.push(col("note", "text", 'S', true));
        bad.columns.retain(|c| c.name != "close_px");
        bad.unique_keys.clear();
        assert_eq!(
            shown(check_target(&parsed, &source(), &bad)),
            [
                "r.toml:2:10: column `ts` is timestamp with time zone on the source but `ts` is text on the target",
                "r.toml:6:9: source column `close` has no column `close_px` in target table `data_bars`",
                "r.toml:3:10: target column `note` is NOT NULL without a default, and neither a source column nor `values` sets it",
                "r.toml:4:7: (symbol, ts, timeframe) does not contain a primary key or unique index of target `data_bars`: the mirror's upsert needs one",
            ]
        );
    }
}
