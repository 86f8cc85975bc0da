//! Rows compared once their columns agree: in order when the query has ORDER BY, else as
//! multisets (both sides sorted, then merged). With the rule's key columns in the result, rows
//! are matched by key, so a changed value is "the row with this key, these columns"; the
//! difference becomes the `detail` of a `read_mismatch`, without row values when redacted.

use std::cmp::Ordering;

use serde_json::{json, Map, Value as Json};

use super::value::{canon, Canon};
use super::{names, CompareOptions, ResultSet, What};

/// The rows of both results compared; `None` when they are equal.
pub(super) fn compare_rows(
    p: &ResultSet,
    s: &ResultSet,
    opts: &CompareOptions,
) -> Option<(What, Json)> {
    let ctx = Ctx::new(p, s, opts);
    if opts.ordered {
        ctx.ordered()
    } else {
        ctx.multiset()
    }
}

/// Every value of a result decoded, row by row.
fn decoded(r: &ResultSet) -> Vec<Vec<Canon>> {
    r.rows
        .iter()
        .map(|row| {
            r.fields
                .iter()
                .enumerate()
                .map(|(i, f)| canon(f.type_oid, f.format, row.get(i).and_then(Option::as_ref)))
                .collect()
        })
        .collect()
}

/// The decoded results and what rows are matched on.
struct Ctx<'a> {
    p: Vec<Vec<Canon>>,
    s: Vec<Vec<Canon>>,
    names: Vec<&'a str>,
    /// Indexes of the key columns; empty when the result lacks any of them.
    key: Vec<usize>,
    tol: (f64, f64),
    opts: &'a CompareOptions,
}

impl<'a> Ctx<'a> {
    fn new(p: &'a ResultSet, s: &'a ResultSet, opts: &'a CompareOptions) -> Ctx<'a> {
        let names = names(&p.fields);
        let key: Option<Vec<usize>> = opts
            .key
            .iter()
            .map(|k| names.iter().position(|n| n == k))
            .collect();
        Ctx {
            p: decoded(p),
            s: decoded(s),
            names,
            key: key.unwrap_or_default(),
            tol: (opts.float_abs, opts.float_rel),
            opts,
        }
    }

    fn cmp_cols(&self, a: &[Canon], b: &[Canon], cols: &[usize]) -> Ordering {
        cols.iter()
            .map(|&i| a[i].cmp(&b[i], self.tol))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    /// Key columns first, then every column: the order both sides are sorted in.
    fn sort_order(&self) -> Vec<usize> {
        let mut cols = self.key.clone();
        cols.extend((0..self.names.len()).filter(|i| !self.key.contains(i)));
        cols
    }

    /// The rows sorted by the columns of `order`.
    fn sorted<'r>(&self, rows: &'r [Vec<Canon>], order: &[usize]) -> Vec<&'r [Canon]> {
        let mut v: Vec<&[Canon]> = rows.iter().map(|r| &r[..]).collect();
        v.sort_by(|a, b| self.cmp_cols(a, b, order));
        v
    }

    fn differing_columns(&self, a: &[Canon], b: &[Canon]) -> Vec<usize> {
        (0..self.names.len())
            .filter(|&i| a[i].cmp(&b[i], self.tol).is_ne())
            .collect()
    }

    /// Two matched rows: a changed row in the report when any column differs.
    fn pair(&self, report: &mut Report, index: usize, a: &[Canon], b: &[Canon]) {
        let cols = self.differing_columns(a, b);
        if !cols.is_empty() {
            report.changed.push(self.changed(index, a, b, &cols));
        }
    }

    fn multiset(&self) -> Option<(What, Json)> {
        let order = self.sort_order();
        let p = self.sorted(&self.p, &order);
        let s = self.sorted(&self.s, &order);
        // Rows are matched on the key when there is one, else on the whole row.
        let matched_on = if self.key.is_empty() {
            &order
        } else {
            &self.key
        };
        let mut report = Report::default();
        let (mut i, mut j) = (0, 0);
        while i < p.len() || j < s.len() {
            let o = match (p.get(i), s.get(j)) {
                (Some(a), Some(b)) => self.cmp_cols(a, b, matched_on),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match o {
                Ordering::Equal => {
                    self.pair(&mut report, i, p[i], s[j]);
                    i += 1;
                    j += 1;
                }
                Ordering::Less => {
                    report.missing.push(self.row_ref(i, p[i]));
                    i += 1;
                }
                Ordering::Greater => {
                    report.extra.push(self.row_ref(j, s[j]));
                    j += 1;
                }
            }
        }
        report.finish(self)
    }

    fn ordered(&self) -> Option<(What, Json)> {
        let mut report = Report::default();
        for (i, (a, b)) in self.p.iter().zip(&self.s).enumerate() {
            self.pair(&mut report, i, a, b);
        }
        let n = self.p.len().min(self.s.len());
        for (i, r) in self.p.iter().enumerate().skip(n) {
            report.missing.push(self.row_ref(i, r));
        }
        for (i, r) in self.s.iter().enumerate().skip(n) {
            report.extra.push(self.row_ref(i, r));
        }
        if !report.changed.is_empty() && self.p.len() == self.s.len() && self.multiset().is_none() {
            // The same rows, in another order.
            let first = report.changed.first().cloned().unwrap_or(Json::Null);
            return Some((What::Order, json!({"what": "order", "first": first})));
        }
        report.finish(self)
    }

    /// A row as a divergence names it: its index, and its key (values unless redacted).
    fn row_ref(&self, index: usize, row: &[Canon]) -> Json {
        let mut m = Map::new();
        m.insert("index".into(), json!(index));
        if !self.key.is_empty() {
            let key: Json = if self.opts.redact {
                json!(self.key.iter().map(|&k| self.names[k]).collect::<Vec<_>>())
            } else {
                Json::Object(
                    self.key
                        .iter()
                        .map(|&k| (self.names[k].to_string(), row[k].display()))
                        .collect(),
                )
            };
            m.insert("key".into(), key);
        } else if !self.opts.redact {
            m.insert(
                "row".into(),
                self.values(row, &(0..row.len()).collect::<Vec<_>>()),
            );
        }
        Json::Object(m)
    }

    fn changed(&self, index: usize, a: &[Canon], b: &[Canon], cols: &[usize]) -> Json {
        let mut r = self.row_ref(index, a);
        if let Json::Object(m) = &mut r {
            m.insert(
                "columns".into(),
                json!(cols.iter().map(|&c| self.names[c]).collect::<Vec<_>>()),
            );
            if !self.opts.redact {
                m.insert("primary".into(), self.values(a, cols));
                m.insert("secondary".into(), self.values(b, cols));
            }
        }
        r
    }

    fn values(&self, row: &[Canon], cols: &[usize]) -> Json {
        Json::Object(
            cols.iter()
                .map(|&c| (self.names[c].to_string(), row[c].display()))
                .collect(),
        )
    }
}

#[derive(Default)]
struct Report {
    changed: Vec<Json>,
    missing: Vec<Json>,
    extra: Vec<Json>,
}

impl Report {
    fn finish(self, ctx: &Ctx) -> Option<(What, Json)> {
        if self.changed.is_empty() && self.missing.is_empty() && self.extra.is_empty() {
            return None;
        }
        let what = if ctx.p.len() != ctx.s.len() {
            What::RowCount
        } else {
            What::Values
        };
        let max = ctx.opts.max_listed;
        let mut columns: Vec<&str> = Vec::new();
        for c in &self.changed {
            for name in c["columns"].as_array().into_iter().flatten() {
                if let Some(n) = name.as_str().filter(|n| !columns.contains(n)) {
                    columns.push(n);
                }
            }
        }
        let cut = |v: Vec<Json>| v.into_iter().take(max).collect::<Vec<_>>();
        let detail = json!({
            "what": what,
            "ordered": ctx.opts.ordered,
            "key": ctx.key.iter().map(|&k| ctx.names[k]).collect::<Vec<_>>(),
            "columns": columns,
            "changed_rows": self.changed.len(),
            "missing_rows": self.missing.len(),
            "extra_rows": self.extra.len(),
            "changed": cut(self.changed),
            "missing": cut(self.missing),
            "extra": cut(self.extra),
        });
        Some((what, detail))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::super::fixtures::rs;
    use super::super::fixtures::{bars, keyed, table, T1, T2};
    use super::super::value::INT4;
    use super::super::{compare, CompareOptions, What};

    #[test]
    fn the_same_rows_in_another_order_are_equal_unless_ordered() {
        let a = bars(&[
            &[Some("DXY"), Some(T1), Some("100.02")],
            &[Some("DXY"), Some(T2), Some("100.03")],
        ]);
        let b = bars(&[
            &[Some("DXY"), Some(T2), Some("100.030000")],
            &[Some("DXY"), Some(T1), Some("100.020000")],
        ]);
        assert_eq!(compare(&a, &b, &keyed(true)), None);
        let ordered = CompareOptions {
            ordered: true,
            ..keyed(true)
        };
        let d = compare(&a, &b, &ordered).unwrap();
        assert_eq!(d.what, What::Order);
        assert_eq!(compare(&a, &a, &ordered), None);
    }

    #[test]
    fn a_changed_value_is_reported_with_its_key_and_column() {
        let a = bars(&[
            &[Some("DXY"), Some(T1), Some("100.02")],
            &[Some("DXY"), Some(T2), Some("100.03")],
        ]);
        let b = bars(&[
            &[Some("DXY"), Some(T1), Some("100.02")],
            &[Some("DXY"), Some(T2), Some("999")],
        ]);
        let d = compare(&a, &b, &keyed(false)).unwrap();
        assert_eq!(d.what, What::Values);
        let c = &d.detail["changed"][0];
        assert_eq!(c["key"]["symbol"], "DXY");
        assert!(c["key"]["ts"].is_string());
        assert_eq!(c["columns"], json!(["close"]));
        assert_eq!(c["primary"]["close"], "100.03");
        assert_eq!(c["secondary"]["close"], "999");
        assert_eq!(d.detail["columns"], json!(["close"]));
        // Redacted: the key's column names and the row's index, no values.
        let d = compare(&a, &b, &keyed(true)).unwrap();
        let c = &d.detail["changed"][0];
        assert_eq!(c["key"], json!(["symbol", "ts"]));
        assert_eq!(c["index"], 1);
        assert!(c.get("primary").is_none());
        assert!(!d.detail.to_string().contains("999"));
    }

    #[test]
    fn row_count_differences_name_the_missing_and_extra_rows() {
        let a = bars(&[
            &[Some("DXY"), Some(T1), Some("1")],
            &[Some("DXY"), Some(T2), Some("2")],
        ]);
        let b = bars(&[&[Some("DXY"), Some(T2), Some("2")]]);
        let d = compare(&a, &b, &keyed(false)).unwrap();
        assert_eq!(d.what, What::RowCount);
        assert_eq!((d.primary_rows, d.secondary_rows), (2, 1));
        assert_eq!(d.detail["missing_rows"], 1);
        assert_eq!(d.detail["missing"][0]["key"]["ts"], T1);
        let d = compare(&b, &a, &keyed(true)).unwrap();
        assert_eq!(d.detail["extra_rows"], 1);
    }

    #[test]
    fn nulls_compare() {
        let a = rs(&[("a", INT4)], &[&[None], &[Some("1")]]);
        let b = rs(&[("a", INT4)], &[&[Some("1")], &[None]]);
        assert_eq!(compare(&a, &b, &CompareOptions::default()), None);
        let c = rs(&[("a", INT4)], &[&[Some("1")], &[Some("0")]]);
        assert!(compare(&a, &c, &CompareOptions::default()).is_some());
    }

    proptest! {
        #[test]
        fn a_permutation_is_the_same_multiset(
            rows in prop::collection::vec((0i64..5, 0i64..5), 0..20),
            seed in any::<u64>(),
            keyed_on in any::<bool>(),
        ) {
            let mut shuffled = rows.clone();
            // A deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let o = CompareOptions {
                key: if keyed_on { vec!["k".into()] } else { vec![] },
                ..Default::default()
            };
            prop_assert_eq!(compare(&table(&rows), &table(&shuffled), &o), None);
        }

        #[test]
        fn multisets_differ_exactly_when_their_counts_differ(
            a in prop::collection::vec((0i64..3, 0i64..3), 0..12),
            b in prop::collection::vec((0i64..3, 0i64..3), 0..12),
            keyed_on in any::<bool>(),
        ) {
            let count = |v: &[(i64, i64)]| {
                let mut m = std::collections::BTreeMap::new();
                for r in v { *m.entry(*r).or_insert(0) += 1; }
                m
            };
            let o = CompareOptions {
                key: if keyed_on { vec!["k".into()] } else { vec![] },
                ..Default::default()
            };
            let d = compare(&table(&a), &table(&b), &o);
            prop_assert_eq!(d.is_none(), count(&a) == count(&b));
            if let Some(d) = d {
                // Every row is accounted for: matched, missing or extra.
                let missing = d.detail["missing_rows"].as_u64().unwrap() as usize;
                let extra = d.detail["extra_rows"].as_u64().unwrap() as usize;
                prop_assert_eq!(a.len() - missing, b.len() - extra);
            }
        }

        #[test]
        fn one_changed_value_is_one_changed_row_when_keyed(
            keys in prop::collection::btree_set(0i64..100, 1..15),
            pick in any::<prop::sample::Index>(),
        ) {
            let rows: Vec<(i64, i64)> = keys.iter().map(|&k| (k, k * 2)).collect();
            let mut changed = rows.clone();
            let i = pick.index(changed.len());
            changed[i].1 += 1;
            let o = CompareOptions { key: vec!["k".into()], redact: false, ..Default::default() };
            let d = compare(&table(&rows), &table(&changed), &o).unwrap();
            prop_assert_eq!(d.what, What::Values);
            prop_assert_eq!(d.detail["changed_rows"].as_u64(), Some(1));
            prop_assert_eq!(&d.detail["changed"][0]["key"]["k"], &json!(rows[i].0));
            prop_assert_eq!(&d.detail["changed"][0]["columns"], &json!(["v"]));
        }
    }
}
