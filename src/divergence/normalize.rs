//! Queries in divergence records without their values: string and number literals become
//! `$n` placeholders, numbered after the query's own parameters (as pg_stat_statements does).

use crate::sql::lex;

/// `SELECT * FROM t WHERE a = 'x' AND b > 1.5` becomes `SELECT * FROM t WHERE a = $1 AND b > $2`.
pub fn normalize_query(sql: &str) -> String {
    let mut next = max_param(sql) + 1;
    replace_literals(sql, |out, _| {
        out.push_str(&format!("${next}"));
        next += 1;
    })
}

/// The shape of a query: what its answer's columns depend on. Literals become markers of their
/// class (a string, with its prefix; an integer that fits `int4`, one that fits `int8`; any
/// other number), so `... WHERE a = 'x'` and `... WHERE a = 'y'` share a shape while `SELECT 1`
/// and `SELECT 1.5` do not.
pub fn query_shape(sql: &str) -> String {
    replace_literals(sql, |out, lit| match lit {
        Literal::Text(prefix) => {
            out.push_str(prefix);
            out.push_str("'?'");
        }
        Literal::Number(n) => out.push_str(if n.parse::<i32>().is_ok() {
            "?i4"
        } else if n.parse::<i64>().is_ok() {
            "?i8"
        } else {
            "?n"
        }),
    })
}

/// A literal replaced by [`replace_literals`].
enum Literal<'a> {
    /// A quoted string, and its prefix (`E`, `B`, `X`, `N`, `U&`, or none).
    Text(&'a str),
    Number(&'a str),
}

fn replace_literals(sql: &str, mut placeholder: impl FnMut(&mut String, Literal<'_>)) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < b.len() {
        let prev_ident =
            i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'$');
        i = match b[i] {
            b'-' | b'/' if lex::comment_end(b, i).is_some() => {
                copy(&mut out, sql, i, lex::comment_end(b, i).unwrap_or(b.len()))
            }
            b'"' => copy(&mut out, sql, i, quoted_end(b, i, b'"')),
            b'\'' => {
                // A prefix E, B, X or U& belongs to the literal.
                let prefix = strip_prefix(&mut out, sql, i);
                placeholder(&mut out, Literal::Text(prefix));
                quoted_end(b, i, b'\'')
            }
            b'$' if !prev_ident => match lex::dollar_tag(&b[i..]) {
                Some(tag_len) => {
                    placeholder(&mut out, Literal::Text("$"));
                    dollar_end(sql, i, tag_len)
                }
                // A parameter $n: keep it.
                None => copy(&mut out, sql, i, i + 1 + digits(&b[i + 1..])),
            },
            b'0'..=b'9' | b'.' if !prev_ident && starts_number(&b[i..]) => {
                let end = number_end(b, i);
                placeholder(&mut out, Literal::Number(&sql[i..end]));
                end
            }
            _ => {
                let ch = sql[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i + ch.len_utf8()
            }
        };
    }
    out
}

/// Copies `sql[start..end]` to `out` as it is; returns `end`.
fn copy(out: &mut String, sql: &str, start: usize, end: usize) -> usize {
    out.push_str(&sql[start..end]);
    end
}

/// How many ASCII digits `b` starts with.
fn digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// The end of the dollar-quoted string at `start` whose tag is `tag_len` bytes long (the end
/// of the text for one left open).
fn dollar_end(sql: &str, start: usize, tag_len: usize) -> usize {
    let tag = &sql[start..start + tag_len];
    let body = start + tag_len;
    sql[body..]
        .find(tag)
        .map_or(sql.len(), |n| body + n + tag_len)
}

/// The end of the number starting at `start`: digits, dots and underscores, then an exponent.
fn number_end(b: &[u8], start: usize) -> usize {
    let mut j = start;
    while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.' || b[j] == b'_') {
        j += 1;
    }
    if j < b.len() && (b[j] == b'e' || b[j] == b'E') {
        let k = j + 1 + usize::from(matches!(b.get(j + 1), Some(b'+' | b'-')));
        if b.get(k).is_some_and(u8::is_ascii_digit) {
            j = k + digits(&b[k..]);
        }
    }
    j
}

fn starts_number(b: &[u8]) -> bool {
    b[0].is_ascii_digit() || (b[0] == b'.' && b.get(1).is_some_and(u8::is_ascii_digit))
}

/// Removes a literal prefix (`E`, `B`, `X`, `N`, `U&`) just pushed to `out`; returns it.
fn strip_prefix<'a>(out: &mut String, sql: &'a str, quote: usize) -> &'a str {
    let before = &sql[..quote];
    for p in ["U&", "u&", "E", "e", "B", "b", "X", "x", "N", "n"] {
        if let Some(rest) = before.strip_suffix(p) {
            let standalone = !rest
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            if standalone && out.ends_with(p) {
                out.truncate(out.len() - p.len());
                return &before[rest.len()..];
            }
            return "";
        }
    }
    ""
}

/// The end (exclusive) of a quoted token starting at `start`, doubled quotes included (the
/// end of the text for one left open).
fn quoted_end(b: &[u8], start: usize, q: u8) -> usize {
    let escapes = q == b'\'' && start > 0 && matches!(b[start - 1], b'E' | b'e');
    lex::quoted_end(b, start, q, escapes).unwrap_or(b.len())
}

fn max_param(sql: &str) -> usize {
    let b = sql.as_bytes();
    let mut max = 0;
    for (i, _) in sql.match_indices('$') {
        let prev_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if prev_ident {
            continue;
        }
        let digits: String = sql[i + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse::<usize>() {
            max = max.max(n);
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::normalize_query as n;

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            n("SELECT * FROM t WHERE a = 'x''y' AND b > 1.5e3 AND c = -2"),
            "SELECT * FROM t WHERE a = $1 AND b > $2 AND c = -$3"
        );
        assert_eq!(
            n("UPDATE t2 SET v = $1 WHERE k = 7"),
            "UPDATE t2 SET v = $1 WHERE k = $2"
        );
        assert_eq!(n("select E'a\\'b', $$x$$, $q$y$q$"), "select $1, $2, $3");
        assert_eq!(
            n("SELECT \"col1\", x1 FROM t -- 'c'\n"),
            "SELECT \"col1\", x1 FROM t -- 'c'\n"
        );
        assert_eq!(n("SELECT 'DXY'::text"), "SELECT $1::text");
        assert_eq!(n("SELECT .5, 3"), "SELECT $1, $2");
    }
}
