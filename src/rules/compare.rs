//! `[table.compare]`: how shadow reads of one table are compared, overriding `[shadow]`.
//!
//! A DBA tunes the comparison per table: a price column stored as `float8` on one side and
//! computed on the other needs a looser tolerance than the rest, and a column the target fills
//! itself (an `updated_at` set by a trigger) differs on every row and says nothing about the
//! migration. Whatever the section leaves out falls back to the `[shadow]` settings.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::parse::{column_name, field, FileCtx};

const COMPARE_KEYS: &[&str] = &[
    "float_tolerance_abs",
    "float_tolerance_rel",
    "ignore_columns",
];

/// A rule's `[table.compare]`; every field optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompareRule {
    /// Floats equal when they differ by at most this much; `None`: `[shadow]`'s.
    pub float_tolerance_abs: Option<f64>,
    /// ... or by at most this share of the larger; `None`: `[shadow]`'s.
    pub float_tolerance_rel: Option<f64>,
    /// Source columns left out of the comparison, as reads name them.
    pub ignore_columns: Vec<String>,
}

impl CompareRule {
    /// Whether the section sets anything.
    pub fn is_empty(&self) -> bool {
        *self == CompareRule::default()
    }

    /// For `rules check`: `compare (abs 0.001, ignores updated_at)`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.float_tolerance_abs {
            parts.push(format!("abs {v}"));
        }
        if let Some(v) = self.float_tolerance_rel {
            parts.push(format!("rel {v}"));
        }
        if !self.ignore_columns.is_empty() {
            parts.push(format!("ignores {}", self.ignore_columns.join(", ")));
        }
        format!("compare ({})", parts.join(", "))
    }
}

/// Reads `[table.compare]`; `key` is the rule's key (its columns cannot be ignored: rows are
/// matched by them).
pub(super) fn parse_compare(ctx: &mut FileCtx, t: &DeTable, key: Option<&[String]>) -> CompareRule {
    let mut out = CompareRule::default();
    let Some((_, v)) = field(t, "compare") else {
        return out;
    };
    let DeValue::Table(section) = v.get_ref() else {
        ctx.problem(
            v.span(),
            format!(
                "`compare` must be a table: write `[table.compare]`, found {}",
                v.get_ref().type_str()
            ),
        );
        return out;
    };
    for (k, val) in section.iter() {
        let name = k.get_ref().as_ref();
        match name {
            "float_tolerance_abs" => out.float_tolerance_abs = tolerance(ctx, name, val),
            "float_tolerance_rel" => out.float_tolerance_rel = tolerance(ctx, name, val),
            "ignore_columns" => out.ignore_columns = ignore_columns(ctx, val, key),
            _ => ctx.problem(
                k.span(),
                format!(
                    "unknown key `compare.{name}`; expected one of: {}",
                    COMPARE_KEYS.join(", ")
                ),
            ),
        }
    }
    out
}

/// A tolerance: a finite number of at least 0 (an integer is fine: `0`).
fn tolerance(ctx: &mut FileCtx, key: &str, v: &toml::Spanned<DeValue>) -> Option<f64> {
    let parsed = match v.get_ref() {
        DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .ok()
            .map(|i| i as f64),
        other => {
            ctx.problem(
                v.span(),
                format!(
                    "`compare.{key}` must be a number, found {}",
                    other.type_str()
                ),
            );
            return None;
        }
    };
    match parsed {
        Some(x) if x.is_finite() && x >= 0.0 => Some(x),
        _ => {
            ctx.problem(
                v.span(),
                format!("`compare.{key}` must be a finite number of at least 0"),
            );
            None
        }
    }
}

fn ignore_columns(
    ctx: &mut FileCtx,
    v: &toml::Spanned<DeValue>,
    key: Option<&[String]>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let DeValue::Array(items) = v.get_ref() else {
        ctx.problem(
            v.span(),
            format!(
                "`compare.ignore_columns` must be an array of column names, found {}",
                v.get_ref().type_str()
            ),
        );
        return out;
    };
    for item in items.iter() {
        if let Some(col) = ignored_column(ctx, item, key, &out) {
            out.push(col);
        }
    }
    out
}

/// One entry of `ignore_columns`: a column name, not listed before and not a key column.
fn ignored_column(
    ctx: &mut FileCtx,
    item: &toml::Spanned<DeValue>,
    key: Option<&[String]>,
    listed: &[String],
) -> Option<String> {
    let span: Range<usize> = item.span();
    let DeValue::String(s) = item.get_ref() else {
        ctx.problem(
            span,
            "`compare.ignore_columns` entries must be strings (column names)",
        );
        return None;
    };
    let col = column_name(ctx, s, span.clone())?;
    if listed.contains(&col) {
        ctx.problem(
            span,
            format!("`compare.ignore_columns`: `{col}` is listed twice"),
        );
        None
    } else if key.is_some_and(|k| k.contains(&col)) {
        ctx.problem(
            span,
            format!("`compare.ignore_columns`: `{col}` is a key column; rows are matched by it"),
        );
        None
    } else {
        Some(col)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::rules::parse::parse_file;

    const HEAD: &str =
        "[[table]]\nsource = \"bars\"\ntarget = \"data_bars\"\nkey = [\"symbol\", \"ts\"]\n";

    fn problems(section: &str) -> Vec<String> {
        let text = format!("{HEAD}{section}");
        let (_, problems) = parse_file(Path::new("r.toml"), &text);
        problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_compare_section_is_read_onto_the_rule() {
        let text = format!(
            "{HEAD}\n[table.compare]\nfloat_tolerance_abs = 1e-6\nfloat_tolerance_rel = 0\n\
             ignore_columns = [\"updated_at\", \"Note\"]\n"
        );
        let (rules, problems) = parse_file(Path::new("r.toml"), &text);
        assert!(problems.is_empty(), "{problems:?}");
        let c = &rules[0].rule.compare;
        assert_eq!(c.float_tolerance_abs, Some(1e-6));
        assert_eq!(c.float_tolerance_rel, Some(0.0));
        assert_eq!(c.ignore_columns, ["updated_at", "note"]);
        assert!(rules[0]
            .rule
            .summary()
            .ends_with(", compare (abs 0.000001, rel 0, ignores updated_at, note)"));
        // The online check points at each ignored column.
        let p = rules[0].problem("compare.ignore_columns.updated_at", "x");
        assert_eq!((p.line, p.col), (9, 19));
    }

    #[test]
    fn without_the_section_everything_falls_back() {
        let (rules, problems) = parse_file(Path::new("r.toml"), HEAD);
        assert!(problems.is_empty());
        assert!(rules[0].rule.compare.is_empty());
        assert!(!rules[0].rule.summary().contains("compare"));
    }

    #[test]
    fn every_problem_has_its_position() {
        let section = "[table.compare]\nfloat_tolerance_abs = -1\nfloat_tolerance_rel = \"0.1\"\n\
                       ignore_columns = [\"ts\", \"a\", \"a\", 3, \"bad name\"]\ntolerance = 1\n";
        assert_eq!(
            problems(section),
            [
                "r.toml:6:23: `compare.float_tolerance_abs` must be a finite number of at least 0",
                "r.toml:7:23: `compare.float_tolerance_rel` must be a number, found string",
                "r.toml:8:19: `compare.ignore_columns`: `ts` is a key column; rows are matched by it",
                "r.toml:8:30: `compare.ignore_columns`: `a` is listed twice",
                "r.toml:8:35: `compare.ignore_columns` entries must be strings (column names)",
                "r.toml:8:38: `bad name` is not a column name",
                "r.toml:9:1: unknown key `compare.tolerance`; expected one of: float_tolerance_abs, float_tolerance_rel, ignore_columns",
            ]
        );
        assert_eq!(
            problems("[table.compare]\nfloat_tolerance_abs = inf\nignore_columns = \"updated_at\"\n"),
            [
                "r.toml:6:23: `compare.float_tolerance_abs` must be a finite number of at least 0",
                "r.toml:7:18: `compare.ignore_columns` must be an array of column names, found string",
            ]
        );
        assert_eq!(
            problems("compare = 1\n"),
            ["r.toml:5:11: `compare` must be a table: write `[table.compare]`, found integer"]
        );
    }
}
