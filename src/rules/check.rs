//! The checks of a rule that need no database: its SQL pieces parse as what they claim to be,
//! renames do not collide, and `values` do not fight the key or the renames.
//!
//! A `where` is checked here for shape (one boolean expression, plain column references, no
//! subqueries); whether its columns exist on the source is checked online by PostgreSQL itself.

use std::ops::Range;

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;
use toml::de::DeTable;

use super::parse::FileCtx;
use super::sections::{StringMap, Translations};

/// Runs the offline checks of one rule and records their problems.
pub fn rule_offline(
    ctx: &mut FileCtx,
    t: &DeTable,
    columns: &StringMap,
    values: &StringMap,
    translate: &Translations,
    filter: Option<&(String, Range<usize>)>,
) {
    if let Some((text, span)) = filter {
        if let Err(message) = where_expression(text) {
            ctx.problem(span.clone(), format!("`where`: {message}"));
        }
    }
    for (col, literal, _, span) in values {
        if let Err(message) = sql_literal(literal) {
            ctx.problem(span.clone(), format!("`values.{col}`: {message}"));
        }
    }
    renamed_twice(ctx, columns);
    for (col, _, span, _) in values {
        if let Some((src, ..)) = columns.iter().find(|(_, tgt, ..)| tgt == col) {
            ctx.problem(
                span.clone(),
                format!("`values.{col}`: column `{src}` is already renamed to `{col}`"),
            );
        }
    }
    key_not_in_values(ctx, t, columns, values);
    for (col, _, span) in translate {
        if values.iter().any(|(v, ..)| v == col) {
            ctx.problem(
                span.clone(),
                format!("`translate.{col}`: `{col}` is a constant in `values`"),
            );
        }
    }
}

fn renamed_twice(ctx: &mut FileCtx, columns: &StringMap) {
    for (i, (src, tgt, _, span)) in columns.iter().enumerate() {
        if let Some((first, ..)) = columns[..i].iter().find(|(_, t, ..)| t == tgt) {
            ctx.problem(
                span.clone(),
                format!("column `{tgt}` is the rename of both `{first}` and `{src}`"),
            );
        }
    }
}

fn key_not_in_values(ctx: &mut FileCtx, t: &DeTable, columns: &StringMap, values: &StringMap) {
    let Some((_, key)) = t.get_key_value("key") else {
        return;
    };
    let Some(items) = key.get_ref().as_array() else {
        return;
    };
    for item in items.iter() {
        let Some(col) = item.get_ref().as_str() else {
            continue;
        };
        let target = columns
            .iter()
            .find(|(s, ..)| s == col)
            .map_or(col, |(_, t, ..)| t.as_str());
        if values.iter().any(|(v, ..)| v == target) {
            ctx.problem(
                item.span(),
                format!(
                    "key column `{col}` is stored in `{target}`, which `values` sets to a constant"
                ),
            );
        }
    }
}

/// Parses a whole text as exactly one SQL expression.
pub fn parse_expression(text: &str) -> Result<Expr, String> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| format!("not valid SQL: {}", strip_error(&e.to_string())))?;
    let expr = parser.parse_expr().map_err(|e| {
        format!(
            "not a valid SQL expression: {}",
            strip_error(&e.to_string())
        )
    })?;
    match parser.peek_token().token {
        Token::EOF => Ok(expr),
        other => Err(format!("unexpected `{other}` after the expression")),
    }
}

fn strip_error(message: &str) -> String {
    message
        .trim_start_matches("sql parser error: ")
        .trim_start_matches("SQL parser error: ")
        .to_string()
}

/// A `where`: one boolean expression over the source's own columns.
pub fn where_expression(text: &str) -> Result<Expr, String> {
    let expr = parse_expression(text)?;
    if !is_boolean_shaped(&expr) {
        return Err(format!("`{text}` is not a boolean condition"));
    }
    let mut problem = None;
    let _ = sqlparser::ast::visit_expressions(&expr, |e| {
        match e {
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                problem = Some("subqueries are not allowed: use the source's own columns".into());
            }
            Expr::CompoundIdentifier(parts) => {
                let name: Vec<_> = parts.iter().map(|p| p.value.as_str()).collect();
                problem = Some(format!(
                    "`{}`: name source columns without a table",
                    name.join(".")
                ));
            }
            Expr::Value(v) if matches!(v.value, Value::Placeholder(_)) => {
                problem = Some("parameters ($1) are not allowed".into());
            }
            _ => {}
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    match problem {
        Some(p) => Err(p),
        None => Ok(expr),
    }
}

/// Whether an expression can be a condition: a comparison, a logical operator, a predicate, or
/// something only PostgreSQL can type (a column, a function, a cast).
fn is_boolean_shaped(expr: &Expr) -> bool {
    match expr {
        Expr::BinaryOp { op, .. } => is_boolean_operator(op),
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            ..
        } => true,
        Expr::Nested(inner) => is_boolean_shaped(inner),
        Expr::Value(v) => matches!(v.value, Value::Boolean(_)),
        Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsNotTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsNotFalse(_)
        | Expr::IsDistinctFrom(..)
        | Expr::IsNotDistinctFrom(..)
        | Expr::InList { .. }
        | Expr::Between { .. }
        | Expr::Like { .. }
        | Expr::ILike { .. }
        | Expr::SimilarTo { .. }
        | Expr::AnyOp { .. }
        | Expr::AllOp { .. }
        | Expr::InSubquery { .. }
        | Expr::Exists { .. } => true,
        // A boolean column or function: PostgreSQL decides in the online check.
        Expr::Identifier(_) | Expr::Function(_) | Expr::Cast { .. } => true,
        _ => false,
    }
}

/// The operators whose result is a boolean: comparisons, logic, pattern matches.
fn is_boolean_operator(op: &BinaryOperator) -> bool {
    use BinaryOperator as B;
    matches!(
        op,
        B::Eq
            | B::NotEq
            | B::Lt
            | B::LtEq
            | B::Gt
            | B::GtEq
            | B::And
            | B::Or
            | B::Xor
            | B::PGRegexMatch
            | B::PGRegexIMatch
            | B::PGRegexNotMatch
            | B::PGRegexNotIMatch
            | B::PGLikeMatch
            | B::PGILikeMatch
            | B::PGNotLikeMatch
            | B::PGNotILikeMatch
    )
}

/// A `values` entry: a SQL literal, optionally typed or cast (`'1m'`, `true`, `42`,
/// `DATE '2026-01-01'`, `'x'::text`).
pub fn sql_literal(text: &str) -> Result<Expr, String> {
    match parse_expression(text) {
        Ok(expr) if is_literal(&expr) => Ok(expr),
        _ => Err(format!(
            "`{text}` is not a SQL literal; write a quoted string ('1m'), a number, true/false or NULL"
        )),
    }
}

fn is_literal(expr: &Expr) -> bool {
    match expr {
        Expr::Value(v) => !matches!(v.value, Value::Placeholder(_)),
        Expr::TypedString(_) => true,
        Expr::Cast { expr, .. } => is_literal(expr),
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        } => {
            matches!(expr.as_ref(), Expr::Value(v) if matches!(v.value, Value::Number(..)))
        }
        Expr::Nested(inner) => is_literal(inner),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_must_be_a_boolean_over_plain_columns() {
        assert!(where_expression("symbol = 'DXY'").is_ok());
        assert!(where_expression("symbol IN ('A', 'B') AND ts > '2020-01-01'").is_ok());
        assert!(where_expression("is_live").is_ok());
        assert!(where_expression("symbol = ").is_err());
        assert!(where_expression("1 + 2")
            .unwrap_err()
            .contains("not a boolean"));
        assert!(where_expression("t.symbol = 'x'")
            .unwrap_err()
            .contains("without a table"));
        let e = where_expression("symbol IN (SELECT s FROM x)").unwrap_err();
        assert!(e.contains("subqueries"), "{e}");
        assert!(where_expression("symbol = 'a' junk").is_err());
    }

    #[test]
    fn values_must_be_literals() {
        for ok in [
            "'1m'",
            "true",
            "42",
            "-1.5",
            "NULL",
            "DATE '2026-01-01'",
            "'x'::text",
        ] {
            assert!(sql_literal(ok).is_ok(), "{ok}");
        }
        for bad in ["1m", "now()", "a + 1", "'a' 'b' c", "$1"] {
            assert!(sql_literal(bad).is_err(), "{bad}");
        }
    }
}
