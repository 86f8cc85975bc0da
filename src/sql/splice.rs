//! Byte positions in the client's own text, for edits that must leave the rest of it untouched.
//!
//! sqlparser's Display re-renders a statement: comments go, syntax is normalized. A statement
//! bound for the primary is edited by splicing into the original text instead (docs/DESIGN.md,
//! principle 3). The tokenizer knows each token's line and column; this module turns them into
//! byte ranges and finds each statement's significant tokens.

use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// A token and its byte range in the text.
#[derive(Debug, Clone)]
pub struct Tok {
    pub token: Token,
    pub range: Range<usize>,
}

impl Tok {
    /// Is this the keyword `kw` (upper case)?
    pub fn is_keyword(&self, kw: &str) -> bool {
        matches!(&self.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
    }
}

/// The significant tokens of a text (no whitespace or comments), with byte ranges.
pub fn tokens(sql: &str) -> Option<Vec<Tok>> {
    let dialect = PostgreSqlDialect {};
    let raw = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .ok()?;
    let mut cursor = Cursor {
        sql,
        byte: 0,
        line: 1,
        col: 1,
    };
    let mut out = Vec::with_capacity(raw.len());
    for t in raw {
        let start = cursor.advance_to(t.span.start.line, t.span.start.column);
        let end = cursor.advance_to(t.span.end.line, t.span.end.column);
        if matches!(t.token, Token::Whitespace(_) | Token::EOF) {
            continue;
        }
        out.push(Tok {
            token: t.token,
            range: start..end,
        });
    }
    Some(out)
}

/// Walks the text forward, turning 1-based (line, column in chars) into byte offsets.
struct Cursor<'a> {
    sql: &'a str,
    byte: usize,
    line: u64,
    col: u64,
}

impl Cursor<'_> {
    fn advance_to(&mut self, line: u64, col: u64) -> usize {
        while (self.line, self.col) < (line, col) {
            let Some(c) = self.sql[self.byte..].chars().next() else {
                break;
            };
            self.byte += c.len_utf8();
            if c == '\n' {
                self.line += 1;
                self.col = 1;
            } else {
                self.col += 1;
            }
        }
        self.byte
    }
}

/// The statements of a text: for each, the range of its significant tokens (no `;`).
pub fn statements(toks: &[Tok]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        if t.token == Token::SemiColon {
            if i > start {
                out.push(start..i);
            }
            start = i + 1;
        }
    }
    if toks.len() > start {
        out.push(start..toks.len());
    }
    out
}

/// The byte range a token range covers in the text.
pub fn text_range(toks: &[Tok], range: &Range<usize>) -> Range<usize> {
    match (toks.get(range.start), toks.get(range.end.wrapping_sub(1))) {
        (Some(a), Some(b)) => a.range.start..b.range.end,
        _ => 0..0,
    }
}

/// The index of the first token of `toks[range]` that is keyword `kw` at parenthesis depth 0.
pub fn top_level_keyword(toks: &[Tok], range: Range<usize>, kw: &str) -> Option<usize> {
    let mut depth = 0i32;
    for i in range {
        match &toks[i].token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            _ if depth == 0 && toks[i].is_keyword(kw) => return Some(i),
            _ => {}
        }
    }
    None
}

/// An edit of the client's text: byte offset, length replaced, new text.
pub type Edit = (usize, usize, String);

/// Applies edits to `sql`; edits must not overlap.
pub fn apply(sql: &str, edits: &mut [Edit]) -> String {
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(sql.len() + 256);
    let mut at = 0;
    for (offset, len, text) in edits.iter() {
        out.push_str(&sql[at..*offset]);
        out.push_str(text);
        at = offset + len;
    }
    out.push_str(&sql[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ranges_are_byte_ranges() {
        let sql = "SELECT 'é' , x -- note\nFROM t; INSERT INTO u VALUES (1) /* c */ ;";
        let toks = tokens(sql).unwrap();
        let texts: Vec<&str> = toks.iter().map(|t| &sql[t.range.clone()]).collect();
        assert_eq!(
            texts,
            [
                "SELECT", "'é'", ",", "x", "FROM", "t", ";", "INSERT", "INTO", "u", "VALUES", "(",
                "1", ")", ";"
            ]
        );
        let stmts = statements(&toks);
        assert_eq!(stmts.len(), 2);
        assert_eq!(
            &sql[text_range(&toks, &stmts[1])],
            "INSERT INTO u VALUES (1)"
        );
    }

    #[test]
    fn edits_keep_the_rest_byte_for_byte() {
        let mut edits = vec![(5, 0, "X".to_string()), (0, 1, "Y".to_string())];
        assert_eq!(apply("abcdefg", &mut edits), "YbcdeXfg");
    }
}
