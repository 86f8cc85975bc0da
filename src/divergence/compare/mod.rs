//! Comparing two query results as the wire carried them: the primary's answer and the
//! secondary's answer to the same read (shadow reads).
//!
//! Results are compared in four steps, stopping at the first that differs: column count, column
//! types (and names), then rows. Rows are compared in order only when the query has ORDER BY;
//! otherwise as multisets. Values are compared by what they mean, not by their bytes: each is
//! decoded into a [`Canon`] from its text or binary format, so `1.50` equals `1.5` (NUMERIC by
//! value with rust_decimal; values wider than it holds by normalized text), floats are equal
//! within a tolerance, and a text `t` equals a binary `0x01`. Types not decoded here are compared
//! by their bytes when both sides used the same format, and skipped when they did not.
//!
//! When the result holds the rule's key columns, rows are matched by key, so a changed value is
//! reported as "the row with this key, these columns". The [`Difference`] serializes to the
//! `detail` of a `read_mismatch` divergence; row values are left out when redacted.
//!
//! - this file: the result sets, the options, the column and type steps;
//! - `rows`: the rows compared (ordered or as multisets) and the difference as `detail`;
//! - `value`: one value decoded by type; `numeric` and `datetime` for NUMERIC and the dates.

mod datetime;
#[cfg(test)]
mod fixtures;
mod numeric;
mod rows;
mod value;

use bytes::Bytes;
use serde_json::{json, Value as Json};

pub use value::{canon, Canon};

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

impl Field {
    pub fn new(name: &str, type_oid: u32, format: i16) -> Field {
        Field {
            name: name.to_string(),
            type_oid,
            format,
        }
    }
}

/// A result as the wire carried it: the RowDescription fields and the DataRow values (`None` is
/// NULL).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultSet {
    pub fields: Vec<Field>,
    pub rows: Vec<Vec<Option<Bytes>>>,
}

/// How to compare.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The query has ORDER BY: rows must come in the same order.
    pub ordered: bool,
    /// Key columns (by name) that identify a row; used only when the result has them all.
    pub key: Vec<String>,
    /// Floats are equal when `|a - b| <= float_abs` ...
    pub float_abs: f64,
    /// ... or `|a - b| <= float_rel * max(|a|, |b|)`.
    pub float_rel: f64,
    /// Leave row values out of the difference (key column names and row indexes stay).
    pub redact: bool,
    /// At most this many rows are listed in each of `changed`, `missing`, `extra`.
    pub max_listed: usize,
    /// Columns (by the primary's name) left out of the comparison: their types and values.
    pub ignore: Vec<String>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            ordered: false,
            key: Vec::new(),
            float_abs: 1e-9,
            float_rel: 1e-9,
            redact: true,
            max_listed: 10,
            ignore: Vec::new(),
        }
    }
}

/// What differs, at the first step that found a difference.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    Columns,
    Types,
    RowCount,
    Order,
    Values,
}

/// A difference between the two results, ready to be a divergence's `detail`.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub what: What,
    pub primary_rows: usize,
    pub secondary_rows: usize,
    /// The structured detail (see the module docs).
    pub detail: Json,
}

/// Compares the primary's result with the secondary's; `None` when they are equal.
pub fn compare(p: &ResultSet, s: &ResultSet, opts: &CompareOptions) -> Option<Difference> {
    let (what, detail) = first_difference(p, s, opts)?;
    Some(Difference {
        what,
        primary_rows: p.rows.len(),
        secondary_rows: s.rows.len(),
        detail,
    })
}

/// The first of the four steps that finds a difference, and the difference.
fn first_difference(p: &ResultSet, s: &ResultSet, opts: &CompareOptions) -> Option<(What, Json)> {
    if p.fields.len() != s.fields.len() {
        let detail = json!({"what": "columns", "primary_columns": names(&p.fields),
                            "secondary_columns": names(&s.fields)});
        return Some((What::Columns, detail));
    }
    let kept;
    let (p, s) = if opts.ignore.is_empty() {
        (p, s)
    } else {
        kept = without_ignored(p, s, &opts.ignore);
        (&kept.0, &kept.1)
    };
    let mismatched = mismatched_types(&p.fields, &s.fields);
    if !mismatched.is_empty() {
        return Some((What::Types, json!({"what": "types", "columns": mismatched})));
    }
    rows::compare_rows(p, s, opts)
}

/// The columns whose name or type differs, side by side.
fn mismatched_types(p: &[Field], s: &[Field]) -> Vec<Json> {
    p.iter()
        .zip(s)
        .filter(|(a, b)| a.type_oid != b.type_oid || a.name != b.name)
        .map(|(a, b)| {
            json!({"primary": {"name": a.name, "type_oid": a.type_oid},
                   "secondary": {"name": b.name, "type_oid": b.type_oid}})
        })
        .collect()
}

/// Both results without the columns the primary names in `ignore` (same positions on both
/// sides: the column counts are equal).
fn without_ignored(p: &ResultSet, s: &ResultSet, ignore: &[String]) -> (ResultSet, ResultSet) {
    let keep: Vec<usize> = (0..p.fields.len())
        .filter(|&i| !ignore.contains(&p.fields[i].name))
        .collect();
    let project = |r: &ResultSet| ResultSet {
        fields: keep.iter().map(|&i| r.fields[i].clone()).collect(),
        rows: r
            .rows
            .iter()
            .map(|row| {
                keep.iter()
                    .map(|&i| row.get(i).cloned().flatten())
                    .collect()
            })
            .collect(),
    };
    (project(p), project(s))
}

fn names(fields: &[Field]) -> Vec<&str> {
    fields.iter().map(|f| f.name.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::fixtures::{rs, T1};
    use super::value::{INT4, INT8, NUMERIC, TEXT, TIMESTAMPTZ};
    use super::*;

    #[test]
    fn ignored_columns_are_left_out_of_types_and_values() {
        let a = rs(
            &[
                ("symbol", TEXT),
                ("updated_at", TIMESTAMPTZ),
                ("close", NUMERIC),
            ],
            &[&[Some("DXY"), Some(T1), Some("1.5")]],
        );
        let b = rs(
            &[("symbol", TEXT), ("updated_at", TEXT), ("close", NUMERIC)],
            &[&[Some("DXY"), Some("later"), Some("1.50")]],
        );
        let o = CompareOptions {
            key: vec!["symbol".into()],
            ignore: vec!["updated_at".into()],
            ..Default::default()
        };
        assert_eq!(compare(&a, &b, &o), None);
        assert!(compare(&a, &b, &CompareOptions::default()).is_some());
        let c = rs(
            &[("symbol", TEXT), ("updated_at", TEXT), ("close", NUMERIC)],
            &[&[Some("DXY"), Some("later"), Some("2")]],
        );
        let d = compare(&a, &c, &o).unwrap();
        assert_eq!(d.detail["columns"], json!(["close"]));
        assert_eq!(d.detail["changed"][0]["key"], json!(["symbol"]));
    }

    #[test]
    fn column_and_type_differences() {
        let a = rs(&[("a", INT4), ("b", TEXT)], &[]);
        let b = rs(&[("a", INT4)], &[]);
        assert_eq!(
            compare(&a, &b, &CompareOptions::default()).unwrap().what,
            What::Columns
        );
        let b = rs(&[("a", INT8), ("b", TEXT)], &[]);
        let d = compare(&a, &b, &CompareOptions::default()).unwrap();
        assert_eq!(d.what, What::Types);
        assert_eq!(d.detail["columns"][0]["secondary"]["type_oid"], INT8);
    }
}
