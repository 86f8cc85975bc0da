//! The lexical pieces of PostgreSQL's SQL that pgbridge scans for itself, without the parser:
//! comments, quoted names and strings, dollar quoting, identifiers. One place for them, so the
//! keyword scan, the shape key, the query normalizer and the COPY target finder agree on where
//! a comment or a string ends.
//!
//! Block comments nest, as in PostgreSQL (`/* a /* b */ c */` is one comment).

/// A byte that may continue an unquoted identifier or keyword (`$` included, as PostgreSQL
/// allows after the first character; every non-ASCII byte, as UTF-8 letters are).
pub fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// The index after the comment starting at `i` (`--` to the end of the line, or a nested
/// `/* */`), if one starts there; `Some(b.len())` for one left open.
pub fn comment_end(b: &[u8], i: usize) -> Option<usize> {
    match (b.get(i)?, b.get(i + 1)) {
        (b'-', Some(b'-')) => Some(memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |n| i + n + 1)),
        (b'/', Some(b'*')) => Some(block_comment_end(b, i).unwrap_or(b.len())),
        _ => None,
    }
}

/// The index after the (nested) block comment starting at `i`; `None` when it is left open.
pub fn block_comment_end(b: &[u8], i: usize) -> Option<usize> {
    let (mut j, mut depth) = (i + 2, 1);
    while depth > 0 {
        match (b.get(j)?, b.get(j + 1)) {
            (b'/', Some(b'*')) => (depth, j) = (depth + 1, j + 2),
            (b'*', Some(b'/')) => (depth, j) = (depth - 1, j + 2),
            _ => j += 1,
        }
    }
    Some(j)
}

/// The index of the first byte at or after `i` that is neither white space nor in a comment.
pub fn skip_blank(b: &[u8], mut i: usize) -> usize {
    loop {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        match comment_end(b, i) {
            Some(end) => i = end,
            None => return i,
        }
    }
}

/// The index after a quoted token starting at `i` (`''` or `""` doubled inside); with
/// `backslash`, a backslash escapes the next byte (E'...' strings). `None` when left open.
pub fn quoted_end(b: &[u8], i: usize, quote: u8, backslash: bool) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            c if c == quote && b.get(j + 1) == Some(&quote) => j += 2,
            c if c == quote => return Some(j + 1),
            b'\\' if backslash => j += 2,
            _ => j += 1,
        }
    }
}

/// The length of a `$tag$` opening at the start of `b` (`$$` included), if it is one and not a
/// parameter such as `$1`.
pub fn dollar_tag(b: &[u8]) -> Option<usize> {
    if b.get(1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let n = b
        .get(1..)?
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count();
    (b.get(1 + n) == Some(&b'$')).then_some(n + 2)
}

/// The index after the dollar-quoted string starting at `i`; `None` when `i` starts none or it
/// is left open.
pub fn dollar_end(b: &[u8], i: usize) -> Option<usize> {
    let tag_len = dollar_tag(&b[i..])?;
    let tag = &b[i..i + tag_len];
    let body = i + tag_len;
    memchr::memmem::find(&b[body..], tag).map(|n| body + n + tag_len)
}

/// The end of the (possibly schema-qualified, possibly quoted) name starting at `i`:
/// `public.bars`, `"Odd""Name".x`. `None` when no name starts there.
pub fn qualified_name_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        if b.get(i) == Some(&b'"') {
            i = quoted_end(b, i, b'"', false)?;
        } else {
            let start = i;
            while b.get(i).is_some_and(|&c| is_ident(c)) {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
        if b.get(i) != Some(&b'.') {
            return Some(i);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_nest_and_end_where_postgresql_ends_them() {
        let b = b"/* a /* b */ c */ SELECT";
        assert_eq!(block_comment_end(b, 0), Some(17));
        assert_eq!(skip_blank(b, 0), 18);
        assert_eq!(skip_blank(b"  -- x\n\t/* y */x", 0), 15);
        assert_eq!(block_comment_end(b"/* open", 0), None);
        assert_eq!(comment_end(b"/* open", 0), Some(7));
        assert_eq!(comment_end(b"- -", 0), None);
    }

    #[test]
    fn quotes_and_dollar_strings_end_at_their_closing_mark() {
        assert_eq!(quoted_end(b"'it''s' x", 0, b'\'', false), Some(7));
        assert_eq!(quoted_end(br"'a\'b' x", 0, b'\'', true), Some(6));
        assert_eq!(quoted_end(b"'open", 0, b'\'', false), None);
        assert_eq!(dollar_tag(b"$1"), None);
        assert_eq!(dollar_tag(b"$$x"), Some(2));
        assert_eq!(dollar_end(b"$q$ 'no' $q$ rest", 0), Some(12));
        assert_eq!(dollar_end(b"$q$ open", 0), None);
    }

    #[test]
    fn qualified_names_take_quotes_and_dots() {
        let end = |s: &'static str| qualified_name_end(s.as_bytes(), 0).map(|e| &s[..e]);
        assert_eq!(end("public.bars (a)"), Some("public.bars"));
        assert_eq!(
            end("\"Odd\"\"Name\".\"x\" FROM"),
            Some("\"Odd\"\"Name\".\"x\"")
        );
        assert_eq!(end("(SELECT 1)"), None);
    }
}
