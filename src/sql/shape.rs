//! Analyses shared by texts that differ only in their literals.
//!
//! Clients that do not prepare their statements send every write with its own literals, so the
//! cache by text misses each time and each text would be parsed, classified and rewritten anew.
//! Yet an analysis depends on a literal only where it copies it: the capture rewrite keeps the
//! client's text (and moves its WHERE into a subquery), read and statement rewrites render it
//! from the AST, and statement ranges are byte offsets that shift with its length. So:
//!
//! - a lexer pass ([`normalize`]) finds the plain literals and replaces each by a marker to form
//!   the key;
//! - the shape of a key is the analysis of the text with a distinct sentinel literal in each
//!   literal's place (`9731904NNNN`, or `'9731904NNNN'` for a string);
//! - a hit ([`Normalized::fill`]) copies the shape with each sentinel replaced by the client's
//!   own literal token and each offset shifted.
//!
//! Exactness rests on two things. Only literals whose token text is also how sqlparser renders
//! them are normalized: plain `'...'` strings without backslashes and plain decimal numbers; a
//! text the lexer is unsure of is not normalized at all. And a shape is kept only if filling it
//! with the literals of the text it was built for reproduces that text's uncached analysis;
//! otherwise the key is remembered as [`Shape::Opaque`] and its texts take the exact path.

use std::collections::HashSet;
use std::ops::Range;

use super::{lex, Analysis, BoundRead};

/// What the shape cache holds for a key.
#[derive(Clone)]
pub enum Shape {
    /// The analysis of the sentinel text, to fill.
    Template(std::sync::Arc<Template>),
    /// Filling does not reproduce the uncached analysis: analyze each text itself.
    Opaque,
}

/// A shape's analysis, and for a read its rewrite with literals as parameters.
pub struct Template {
    pub analysis: Analysis,
    pub bound: Option<BoundTemplate>,
}

/// A read rewrite of the sentinel text with the sentinels that can be parameters
/// ([`super::read::bind`]) replaced by `$1`, `$2`, ...; the other sentinels stay, to fill.
#[derive(Debug)]
pub struct BoundTemplate {
    sql: std::sync::Arc<str>,
    /// The literal index of each parameter.
    literals: Vec<usize>,
    /// Whether `sql` still holds sentinels.
    fill: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lit {
    Str,
    Num,
}

/// The digits every sentinel starts with; a text containing them is not normalized.
const MARK: &str = "9731904";
/// Sentinels carry a 4-digit literal index.
const MAX_LITERALS: usize = 10_000;
const NUM_LEN: usize = MARK.len() + 4;

/// A text's plain literals and the key they give.
#[derive(Debug)]
pub struct Normalized {
    /// The text with each literal replaced by `\x01s` or `\x01n`.
    pub key: String,
    spans: Vec<(Range<usize>, Lit)>,
}

/// The index after `$1` or a dollar-quoted string starting at `i`.
fn skip_dollar(b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i + 1..];
    if rest.first()?.is_ascii_digit() {
        return Some(i + 1 + rest.iter().take_while(|c| c.is_ascii_digit()).count());
    }
    lex::dollar_end(b, i)
}

/// The plain literals of `sql` and its key; `None` when it has none or the lexer is unsure.
pub fn normalize(sql: &str) -> Option<Normalized> {
    normalize_keeping(sql, &HashSet::new())
}

/// [`normalize`], leaving the literals whose token text is in `keep` as they are: those the
/// rules' `where` names, on which an analysis depends (a read that repeats `symbol = 'DXY'` may
/// be served by the secondary, one with another symbol may not).
pub fn normalize_keeping(sql: &str, keep: &HashSet<String>) -> Option<Normalized> {
    let b = sql.as_bytes();
    if memchr::memchr(1, b).is_some() || memchr::memmem::find(b, MARK.as_bytes()).is_some() {
        return None;
    }
    let spans = literal_spans(sql, keep)?;
    if spans.is_empty() || spans.len() >= MAX_LITERALS {
        return None;
    }
    Some(Normalized {
        key: key(sql, &spans),
        spans,
    })
}

/// The lexer pass: the spans of the plain literals of `sql` not in `keep`; `None` when the
/// lexer is unsure of the text.
fn literal_spans(sql: &str, keep: &HashSet<String>) -> Option<Vec<(Range<usize>, Lit)>> {
    let b = sql.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let next = b.get(i + 1).copied();
        match b[i] {
            b'-' if next == Some(b'-') => i = lex::comment_end(b, i)?,
            b'/' if next == Some(b'*') => i = lex::block_comment_end(b, i)?,
            b'"' => i = lex::quoted_end(b, i, b'"', false)?,
            b'\'' => {
                let (end, plain) = string_end(b, i)?;
                if plain && !keep.contains(&sql[i..end]) {
                    spans.push((i..end, Lit::Str));
                }
                i = end;
            }
            b'$' => i = skip_dollar(b, i)?,
            b'.' if next.is_some_and(|c| c.is_ascii_digit()) => return None,
            c if c.is_ascii_digit() => {
                let end = number_end(b, i)?;
                if !keep.contains(&sql[i..end]) {
                    spans.push((i..end, Lit::Num));
                }
                i = end;
            }
            c if lex::is_ident(c) => i += b[i..].iter().take_while(|&&c| lex::is_ident(c)).count(),
            _ => i += 1,
        }
    }
    Some(spans)
}

/// The index after the string starting at `i`, and whether it is a plain literal (not `E''`,
/// `N''`, `B''`, `X''` or `U&''`, which are not rendered as written); `None` when it is left
/// open, or sqlparser would not render it as the client wrote it.
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let prefix = i.checked_sub(1).map(|p| b[p]);
    let escaped = matches!(prefix, Some(b'e' | b'E'));
    let end = lex::quoted_end(b, i, b'\'', escaped)?;
    if prefix.is_some_and(|p| lex::is_ident(p) || p == b'&') {
        return Some((end, false));
    }
    // sqlparser renders a value holding two quotes in a row as if it were already escaped.
    let inner = &b[i + 1..end - 1];
    if inner.contains(&b'\\') || memchr::memmem::find(inner, b"''''").is_some() {
        return None;
    }
    Some((end, true))
}

/// The index after the number starting at `start`; `None` when it is not plain.
fn number_end(b: &[u8], start: usize) -> Option<usize> {
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = start + digits(start);
    if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
        i += 1 + digits(i + 1);
    }
    // 1e5, 1., 1_000, 0x1F, 12abc: not plain.
    if b.get(i).is_some_and(|&c| lex::is_ident(c) || c == b'.') {
        return None;
    }
    Some(i)
}

/// The text with each literal span replaced by its marker.
fn key(sql: &str, spans: &[(Range<usize>, Lit)]) -> String {
    let mut key = String::with_capacity(sql.len());
    let mut at = 0;
    for (r, lit) in spans {
        key.push_str(&sql[at..r.start]);
        key.push_str(match lit {
            Lit::Str => "\x01s",
            Lit::Num => "\x01n",
        });
        at = r.end;
    }
    key.push_str(&sql[at..]);
    key
}

/// The literal tokens of the rules' `where` expressions, to keep in shape keys.
pub fn filter_literals(filters: impl IntoIterator<Item = impl AsRef<str>>) -> HashSet<String> {
    let mut out = HashSet::new();
    for f in filters {
        let f = f.as_ref();
        if let Some(n) = normalize(f) {
            out.extend(n.spans.iter().map(|(r, _)| f[r.clone()].to_string()));
        }
    }
    out
}

/// The sentinel of literal `i`.
fn sentinel(i: usize, lit: Lit) -> String {
    match lit {
        Lit::Num => format!("{MARK}{i:04}"),
        Lit::Str => format!("'{MARK}{i:04}'"),
    }
}

/// The literal index of a sentinel's value (a number's token, or a string's content).
pub fn sentinel_index(value: &str) -> Option<usize> {
    let digits = value.strip_prefix(MARK)?;
    if digits.len() != 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sentinel_len(lit: Lit) -> usize {
    match lit {
        Lit::Num => NUM_LEN,
        Lit::Str => NUM_LEN + 2,
    }
}

impl Normalized {
    /// `sql` with a distinct sentinel in each literal's place: the text the shape is built from.
    pub fn sentinel_text(&self, sql: &str) -> String {
        let mut out = String::with_capacity(sql.len() + self.spans.len() * 8);
        let mut at = 0;
        for (i, (r, lit)) in self.spans.iter().enumerate() {
            out.push_str(&sql[at..r.start]);
            out.push_str(&sentinel(i, *lit));
            at = r.end;
        }
        out.push_str(&sql[at..]);
        out
    }

    /// The analysis of `sql` from the shape of its key: sentinels replaced by `sql`'s literals,
    /// offsets moved to `sql`'s. `None` when the shape does not fit.
    pub fn fill(&self, shape: &Analysis, sql: &str) -> Option<Analysis> {
        let mut a = shape.clone();
        let subst = |s: &mut String| -> Option<()> {
            *s = self.substitute(s, sql)?;
            Some(())
        };
        if let Some(s) = &mut a.capture_sql {
            subst(s)?;
        }
        if let Some(s) = &mut a.parse_error {
            subst(s)?;
        }
        for st in &mut a.statements {
            st.text = self.offset(st.text.start)?..self.offset(st.text.end)?;
            for s in [&mut st.read_rewrite, &mut st.note].into_iter().flatten() {
                subst(s)?;
            }
            if let Some(r) = &mut st.statement_rewrite {
                subst(&mut r.sql)?;
                for w in &mut r.warnings {
                    subst(w)?;
                }
            }
        }
        Some(a)
    }

    /// The token of literal `i` in `sql` (the text this was normalized from).
    pub fn literal<'s>(&self, sql: &'s str, i: usize) -> &'s str {
        &sql[self.spans[i].0.clone()]
    }

    /// `rewrite` (a read rewrite of the sentinel text) with the sentinels of `params` (sorted
    /// literal indexes, [`super::read::bind::parameter_literals`]) replaced by `$1`, `$2`, ...
    /// in the order they appear; `None` when there is none, or a sentinel does not fit.
    pub fn bound_template(&self, rewrite: &str, params: &[usize]) -> Option<BoundTemplate> {
        let mut literals = Vec::new();
        let mut fill = false;
        let sql = self.replace_sentinels(rewrite, |i, lit| match params.binary_search(&i) {
            Ok(_) => {
                literals.push(i);
                format!("${}", literals.len())
            }
            Err(_) => {
                fill = true;
                sentinel(i, lit)
            }
        })?;
        if literals.is_empty() {
            return None;
        }
        Some(BoundTemplate {
            sql: sql.into(),
            literals,
            fill,
        })
    }

    /// The bound read of `sql` from its shape's template: the text with the other literals
    /// filled in, each parameter's type (a number's as its literal's, a string's left to the
    /// server) and its value as text.
    pub fn bind(&self, t: &BoundTemplate, sql: &str) -> Option<BoundRead> {
        let text = match t.fill {
            true => self.substitute(&t.sql, sql)?.into(),
            false => t.sql.clone(),
        };
        let mut types = Vec::with_capacity(t.literals.len());
        let mut values = Vec::with_capacity(t.literals.len());
        for &i in &t.literals {
            let (range, lit) = self.spans.get(i)?;
            let token = &sql[range.clone()];
            match lit {
                Lit::Num => {
                    types.push(super::read::bind::number_type(token));
                    values.push(token.to_string());
                }
                Lit::Str => {
                    types.push(0);
                    values.push(token[1..token.len() - 1].replace("''", "'"));
                }
            }
        }
        Some(BoundRead {
            sql: text,
            types,
            values,
        })
    }

    /// `s` (derived from the sentinel text) with every sentinel replaced by the literal.
    fn substitute(&self, s: &str, sql: &str) -> Option<String> {
        self.replace_sentinels(s, |i, _| sql[self.spans[i].0.clone()].to_string())
    }

    /// `s` with each sentinel (of literal `index`, of kind `lit`) replaced by `with(index, lit)`;
    /// `None` when a sentinel does not fit its literal.
    fn replace_sentinels(
        &self,
        s: &str,
        mut with: impl FnMut(usize, Lit) -> String,
    ) -> Option<String> {
        let b = s.as_bytes();
        let mut out = String::with_capacity(s.len() + 64);
        let mut at = 0;
        for p in memchr::memmem::find_iter(b, MARK.as_bytes()) {
            let digits = s.get(p + MARK.len()..p + NUM_LEN)?;
            if !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let index = digits.parse::<usize>().ok()?;
            let (_, lit) = self.spans.get(index)?;
            let (before, after) = (p.checked_sub(1).map(|q| b[q]), b.get(p + NUM_LEN).copied());
            let (start, end) = match lit {
                Lit::Str if before == Some(b'\'') && after == Some(b'\'') => {
                    (p - 1, p + NUM_LEN + 1)
                }
                Lit::Num
                    if !before.is_some_and(|c| c.is_ascii_digit() || c == b'.')
                        && !after.is_some_and(|c| c.is_ascii_digit()) =>
                {
                    (p, p + NUM_LEN)
                }
                _ => return None,
            };
            if start < at {
                return None;
            }
            out.push_str(&s[at..start]);
            out.push_str(&with(index, *lit));
            at = end;
        }
        out.push_str(&s[at..]);
        Some(out)
    }

    /// An offset in the sentinel text as an offset in the client's text (never inside a
    /// literal).
    fn offset(&self, o: usize) -> Option<usize> {
        let mut shift: isize = 0;
        for (r, lit) in &self.spans {
            // shift = client bytes - sentinel bytes so far.
            let start = (r.start as isize - shift) as usize;
            let end = start + sentinel_len(*lit);
            if end <= o {
                shift += r.len() as isize - sentinel_len(*lit) as isize;
            } else if start < o {
                return None;
            } else {
                break;
            }
        }
        usize::try_from(o as isize + shift).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lits(sql: &str) -> Option<Vec<&str>> {
        normalize(sql).map(|n| n.spans.iter().map(|(r, _)| &sql[r.clone()]).collect())
    }

    #[test]
    fn plain_literals_are_found_and_the_rest_is_skipped() {
        let sql = "SELECT 'a''b', 12.5, t1.x, $1, $q$ 'no' 7 $q$, E'\\'x', \"c'\" -- 'no'\n/* 3 /* 4 */ */ 3";
        assert_eq!(lits(sql).unwrap(), ["'a''b'", "12.5", "3"]);
        let n = normalize("UPDATE t SET a = 'x' WHERE b = 10").unwrap();
        assert_eq!(n.key, "UPDATE t SET a = \x01s WHERE b = \x01n");
        assert_eq!(
            n.sentinel_text("UPDATE t SET a = 'x' WHERE b = 10"),
            "UPDATE t SET a = '97319040000' WHERE b = 97319040001"
        );
    }

    #[test]
    fn strings_and_numbers_end_where_their_tokens_end() {
        assert_eq!(string_end(b"'a''b' x", 0), Some((6, true)));
        assert_eq!(string_end(b"E'a\\'b' x", 1), Some((7, false)));
        assert_eq!(string_end(b"U&'x'", 2), Some((5, false)));
        assert_eq!(string_end(b"'a\\b'", 0), None);
        assert_eq!(number_end(b"12.5)", 0), Some(4));
        assert_eq!(number_end(b"7 ", 0), Some(1));
        assert_eq!(number_end(b"1.e", 0), None);
        assert_eq!(number_end(b"0x1F", 0), None);
    }

    #[test]
    fn unsure_texts_are_not_normalized() {
        for sql in [
            "SELECT 1e5",
            "SELECT .5",
            "SELECT 'a\\b'",
            "SELECT 1.",
            "SELECT 'x'''''",
            "SELECT $x",
            "SELECT 'open",
            "SELECT 97319041",
            "SELECT x",
        ] {
            assert!(normalize(sql).is_none(), "{sql}");
        }
    }

    #[test]
    fn offsets_move_with_the_literals() {
        let sql = "SELECT 'abc'; SELECT 5";
        let n = normalize(sql).unwrap();
        let sent = n.sentinel_text(sql);
        let second = sent.find("; ").unwrap() + 2;
        assert_eq!(n.offset(second), Some(14));
        assert_eq!(n.offset(sent.len()), Some(sql.len()));
        assert_eq!(n.offset(9), None, "inside a literal");
        assert_eq!(n.offset(second + 7), Some(21), "before the second literal");
        assert_eq!(n.offset(second + 8), None, "inside the second literal");
        assert_eq!(
            n.substitute(&format!("{sent} RETURNING x"), sql).unwrap(),
            format!("{sql} RETURNING x")
        );
    }
}
