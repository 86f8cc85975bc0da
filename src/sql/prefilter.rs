//! The pre-filter: can this statement mention a migrated table at all?
//!
//! Most traffic never touches a migrated table and must not pay for the parser (docs/DESIGN.md,
//! principle 4). The scan looks for the bare source table names, case-insensitively and at
//! identifier boundaries, so `Derived_Data_Bars`, `"derived_data_bars"` and
//! `public.derived_data_bars` are all seen. It errs only one way: a name inside a string or a
//! comment is seen too, which costs a parse, never a missed table.
//!
//! Speed comes from a 256-entry table of the names' first bytes (both cases): most bytes of a
//! statement are rejected with one lookup, and only a candidate start is compared in full.

use super::keywords::starts_with_ignore_case;

/// The bare names of the migrated source tables, ready to be scanned for.
#[derive(Debug, Clone)]
pub struct Prefilter {
    /// For each byte: does some name start with it (either case)?
    first: [bool; 256],
    /// Lower-case names, with the index of the rule's name each one stands for.
    names: Vec<(Vec<u8>, usize)>,
}

impl Prefilter {
    /// Builds the filter for names given as PostgreSQL folds them.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Prefilter {
        let mut first = [false; 256];
        let mut out = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            let lower = name.to_lowercase().into_bytes();
            let Some(&b) = lower.first() else { continue };
            first[b as usize] = true;
            first[b.to_ascii_uppercase() as usize] = true;
            out.push((lower, i));
        }
        Prefilter { first, names: out }
    }

    /// True when no name could occur in `sql`: the statement needs no parsing for the rules.
    #[inline]
    pub fn is_clear(&self, sql: &str) -> bool {
        if self.names.is_empty() {
            return true;
        }
        let bytes = sql.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if self.first[bytes[i] as usize] && self.match_at(bytes, i).is_some() {
                return false;
            }
            i += 1;
        }
        true
    }

    /// The indexes (in the order given to [`Prefilter::new`]) of every name found in `sql`.
    pub fn seen(&self, sql: &str) -> Vec<usize> {
        let bytes = sql.as_bytes();
        let mut found: Vec<usize> = Vec::new();
        for i in 0..bytes.len() {
            if self.first[bytes[i] as usize] {
                if let Some(n) = self.match_at(bytes, i) {
                    if !found.contains(&n) {
                        found.push(n);
                    }
                }
            }
        }
        found
    }

    #[inline]
    fn match_at(&self, bytes: &[u8], i: usize) -> Option<usize> {
        if i > 0 && is_ident_byte(bytes[i - 1]) {
            return None;
        }
        for (name, index) in &self.names {
            let end = i + name.len();
            if end <= bytes.len()
                && starts_with_ignore_case(&bytes[i..], name)
                && !bytes.get(end).is_some_and(|&b| is_ident_byte(b))
            {
                return Some(*index);
            }
        }
        None
    }
}

#[inline]
fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_seen_however_they_are_written() {
        let f = Prefilter::new(["derived_data_bars", "orders"]);
        for sql in [
            "SELECT * FROM derived_data_bars",
            "select * from DERIVED_DATA_BARS b",
            "SELECT * FROM \"derived_data_bars\"",
            "SELECT * FROM public.derived_data_bars",
            "SELECT 1 FROM x JOIN Orders o ON o.id = x.id",
            "UPDATE orders SET a = 1",
        ] {
            assert!(!f.is_clear(sql), "{sql}");
        }
        assert_eq!(
            f.seen("SELECT * FROM orders, Derived_Data_Bars"),
            vec![1, 0]
        );
    }

    #[test]
    fn other_statements_are_clear() {
        let f = Prefilter::new(["derived_data_bars", "orders"]);
        for sql in [
            "SELECT id, name FROM users WHERE id = $1",
            "SELECT * FROM derived_data_bars_archive",
            "SELECT * FROM my_orders",
            "SELECT orders_count FROM stats",
            "",
        ] {
            assert!(f.is_clear(sql), "{sql}");
        }
        assert!(Prefilter::new([]).is_clear("SELECT * FROM orders"));
    }
}
