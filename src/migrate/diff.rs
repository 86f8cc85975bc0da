//! One key range of a verify compared: the rule's image of the source rows against the target's
//! rows seen through the rule, matched by key, values compared as shadow reads compare them
//! (NUMERIC by value, floats within the tolerance, `[table.compare]`'s ignored columns left out).
//! Pure: the rows come decoded, the differences go back as data.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::divergence::compare::Canon;
use crate::mirror::apply::CanonicalKey;

/// One row of either side: its key (canonical and as text) and every source column decoded.
#[derive(Debug, Clone)]
pub struct Image {
    pub key: CanonicalKey,
    /// The key columns' text values, in rule key order (what reports and repairs name).
    pub key_text: Vec<Option<String>>,
    pub values: Vec<Canon>,
}

/// How values are compared.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Floats equal within `|a - b| <= abs` or `<= rel * max(|a|, |b|)`.
    pub tolerance: (f64, f64),
    /// Indexes of the columns left out of the comparison.
    pub ignore: Vec<usize>,
}

/// A key on both sides whose values differ.
#[derive(Debug, Clone)]
pub struct Differing {
    pub primary: Image,
    pub secondary: Image,
    /// Indexes of the columns that differ.
    pub columns: Vec<usize>,
}

/// What one range holds.
#[derive(Debug, Clone, Default)]
pub struct Differences {
    pub matched: u64,
    /// On the source, not on the target.
    pub missing: Vec<Image>,
    /// On the target, not on the source.
    pub extra: Vec<Image>,
    pub differing: Vec<Differing>,
}

impl Differences {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.differing.is_empty()
    }

    /// Every differing key, canonical.
    pub fn keys(&self) -> impl Iterator<Item = &CanonicalKey> {
        let missing = self.missing.iter().map(|i| &i.key);
        let extra = self.extra.iter().map(|i| &i.key);
        missing
            .chain(extra)
            .chain(self.differing.iter().map(|d| &d.primary.key))
    }

    /// Leaves out the keys `keep` says no to (keys written since the snapshot: re-checked, not
    /// reported); how many were left out.
    pub fn retain(&mut self, keep: impl Fn(&CanonicalKey) -> bool) -> usize {
        let before = self.missing.len() + self.extra.len() + self.differing.len();
        self.missing.retain(|i| keep(&i.key));
        self.extra.retain(|i| keep(&i.key));
        self.differing.retain(|d| keep(&d.primary.key));
        before - (self.missing.len() + self.extra.len() + self.differing.len())
    }
}

/// Compares the source's rows with the target's, by key.
pub fn diff(primary: Vec<Image>, secondary: Vec<Image>, opts: &DiffOptions) -> Differences {
    let mut out = Differences::default();
    let mut target: HashMap<CanonicalKey, Image> =
        secondary.into_iter().map(|i| (i.key.clone(), i)).collect();
    for p in primary {
        match target.remove(&p.key) {
            None => out.missing.push(p),
            Some(s) => {
                let columns = differing_columns(&p.values, &s.values, opts);
                if columns.is_empty() {
                    out.matched += 1;
                } else {
                    out.differing.push(Differing {
                        primary: p,
                        secondary: s,
                        columns,
                    });
                }
            }
        }
    }
    let mut extra: Vec<Image> = target.into_values().collect();
    extra.sort_by(|a, b| a.key.cmp(&b.key));
    out.extra = extra;
    out
}

fn differing_columns(a: &[Canon], b: &[Canon], opts: &DiffOptions) -> Vec<usize> {
    let n = a.len().max(b.len());
    (0..n)
        .filter(|i| !opts.ignore.contains(i))
        .filter(|&i| match (a.get(i), b.get(i)) {
            (Some(x), Some(y)) => x.cmp(y, opts.tolerance) != Ordering::Equal,
            _ => true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::divergence::compare::canon;
    use bytes::Bytes;

    const INT4: u32 = 23;
    const NUMERIC: u32 = 1700;
    const FLOAT8: u32 = 701;

    fn image(id: i32, values: &[(u32, Option<&str>)]) -> Image {
        Image {
            key: vec![Some(id.to_be_bytes().to_vec())],
            key_text: vec![Some(id.to_string())],
            values: values
                .iter()
                .map(|(oid, v)| canon(*oid, 0, v.map(|s| Bytes::from(s.to_string())).as_ref()))
                .collect(),
        }
    }

    fn opts() -> DiffOptions {
        DiffOptions {
            tolerance: (1e-9, 1e-9),
            ignore: Vec::new(),
        }
    }

    #[test]
    fn rows_are_matched_by_key_and_compared_by_value() {
        let p = vec![
            image(1, &[(INT4, Some("1")), (NUMERIC, Some("1.50"))]),
            image(2, &[(INT4, Some("2")), (NUMERIC, Some("2"))]),
            image(3, &[(INT4, Some("3")), (NUMERIC, Some("3"))]),
        ];
        let s = vec![
            image(4, &[(INT4, Some("4")), (NUMERIC, Some("4"))]),
            image(2, &[(INT4, Some("2")), (NUMERIC, Some("2.5"))]),
            image(1, &[(INT4, Some("1")), (NUMERIC, Some("1.5"))]),
        ];
        let d = diff(p, s, &opts());
        assert_eq!(d.matched, 1, "1.50 and 1.5 are one value");
        assert_eq!(d.missing.len(), 1);
        assert_eq!(d.missing[0].key_text, vec![Some("3".to_string())]);
        assert_eq!(d.extra.len(), 1);
        assert_eq!(d.extra[0].key_text, vec![Some("4".to_string())]);
        assert_eq!(d.differing.len(), 1);
        assert_eq!(d.differing[0].columns, vec![1]);
        assert_eq!(d.keys().count(), 3);
    }

    #[test]
    fn floats_within_the_tolerance_and_ignored_columns_do_not_differ() {
        let p = vec![image(1, &[(FLOAT8, Some("0.1")), (INT4, Some("7"))])];
        let s = vec![image(1, &[(FLOAT8, Some("0.1000001")), (INT4, Some("8"))])];
        let strict = diff(p.clone(), s.clone(), &opts());
        assert_eq!(strict.differing[0].columns, vec![0, 1]);
        let loose = DiffOptions {
            tolerance: (1e-3, 0.0),
            ignore: vec![1],
        };
        let d = diff(p, s, &loose);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.matched, 1);
    }

    #[test]
    fn nulls_differ_from_values_and_equal_each_other() {
        let p = vec![image(1, &[(INT4, None)]), image(2, &[(INT4, None)])];
        let s = vec![image(1, &[(INT4, None)]), image(2, &[(INT4, Some("0"))])];
        let d = diff(p, s, &opts());
        assert_eq!(d.matched, 1);
        assert_eq!(d.differing.len(), 1);
        assert_eq!(d.differing[0].primary.key_text, vec![Some("2".to_string())]);
    }

    #[test]
    fn keys_written_since_the_snapshot_are_left_out() {
        let p = vec![
            image(1, &[(INT4, Some("1"))]),
            image(2, &[(INT4, Some("2"))]),
        ];
        let s = vec![image(3, &[(INT4, Some("3"))])];
        let mut d = diff(p, s, &opts());
        let hot: CanonicalKey = vec![Some(2i32.to_be_bytes().to_vec())];
        assert_eq!(d.retain(|k| *k != hot), 1);
        assert_eq!(d.missing.len(), 1);
        assert_eq!(d.extra.len(), 1);
    }
}
