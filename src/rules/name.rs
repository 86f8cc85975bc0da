//! Table and column names as PostgreSQL reads them: unquoted parts fold to lower case, the
//! default schema is `public`, and names are quoted again only when they must be.

use std::fmt;

/// A table name as PostgreSQL resolves it: unquoted parts folded to lower case, default schema
/// `public`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// Parses `name`, `schema.name`, or either part double-quoted.
    pub fn parse(text: &str) -> Option<TableName> {
        let parts = split_identifier(text)?;
        match parts.as_slice() {
            [name] => Some(TableName::new("public", name)),
            [schema, name] => Some(TableName::new(schema, name)),
            _ => None,
        }
    }

    pub fn new(schema: &str, name: &str) -> TableName {
        TableName {
            schema: schema.to_string(),
            name: name.to_string(),
        }
    }

    /// The name quoted for SQL: `"public"."data_bars"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.schema == "public" {
            f.write_str(&self.name)
        } else {
            write!(f, "{}.{}", self.schema, self.name)
        }
    }
}

/// Splits a possibly quoted, dotted identifier into its folded parts.
pub(crate) fn split_identifier(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_alphanumeric() || c == '_' || c == '$') {
                    return None;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => continue,
            Some(_) => return None,
        }
    }
}

/// A SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Quotes an identifier for SQL when it needs it.
pub fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_lowercase() || c == '_' || (i > 0 && c.is_ascii_digit()));
    if plain && !name.is_empty() && !is_reserved(name) {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Words PostgreSQL reserves (those likely to name a table or a column): a name that is one is
/// quoted.
const RESERVED: &[&str] = &[
    "all",
    "and",
    "any",
    "as",
    "asc",
    "case",
    "check",
    "column",
    "constraint",
    "create",
    "default",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "false",
    "for",
    "from",
    "grant",
    "group",
    "having",
    "in",
    "into",
    "limit",
    "not",
    "null",
    "offset",
    "on",
    "or",
    "order",
    "select",
    "table",
    "then",
    "to",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "when",
    "where",
    "with",
];

fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_like_postgresql() {
        let t = TableName::parse("Derived_Data_Bars").unwrap();
        assert_eq!(t, TableName::new("public", "derived_data_bars"));
        let t = TableName::parse("\"Odd\"\"Name\".x").unwrap();
        assert_eq!(t, TableName::new("Odd\"Name", "x"));
        assert!(TableName::parse("a.b.c").is_none());
        assert!(TableName::parse("bad name").is_none());
        assert_eq!(quote_ident("Odd"), "\"Odd\"");
        assert_eq!(quote_ident("close_px"), "close_px");
        assert_eq!(quote_ident("order"), "\"order\"");
    }
}
