//! Which literals of a read rewrite can be parameters of a statement prepared on the secondary.
//!
//! A simple-protocol read carries its literals in its text, so the secondary would parse and plan
//! every read again (for the DXY read of `bench/reads.sh`, planning is most of its cost). The
//! shape cache ([`crate::sql::shape`]) knows where each literal is; the ones that sit where a
//! parameter means exactly what the literal meant become `$1`, `$2`, ... of one statement per
//! shape, prepared once per secondary connection, with the literals bound as text values.
//!
//! A literal is a parameter only as an operand of an operator (`ts = '...'`, `5 * x`, a sign),
//! a bound of `BETWEEN`, an item of `IN (...)`, the operand of a cast (`'...'::timestamptz`), a
//! `LIKE` pattern or a plain function argument. Everywhere else it stays in the text: `ORDER BY 1`
//! and `GROUP BY 1` name output columns, `INTERVAL '1' DAY`, `DATE '...'`, `LIMIT 10` and type
//! modifiers are grammar a parameter cannot take, and a select-list `'x'` keeps its own type. A
//! number is bound with the type PostgreSQL gives its literal (`int4`, `int8` or `numeric`); a
//! string is left for the server to infer, as for an untyped literal. Where PostgreSQL resolves a
//! parameter differently from a literal (a function of `"any"`, such as `concat`), it says so at
//! Parse ("could not determine data type of parameter"): the session then sends that text as it
//! is, from then on (`src/reads/secondary/mod.rs`).

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    CastKind, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, UnaryOperator, Value, Visit,
    Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::sql::shape::sentinel_index;

/// The sentinel literals of `rewrite` (a read rewrite of a shape's sentinel text) that can be
/// parameters: each appears once, in a parameter position. `None` when the text does not parse
/// or already has parameters.
pub fn parameter_literals(rewrite: &str) -> Option<Vec<usize>> {
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, rewrite).ok()?;
    let mut walk = Walk::default();
    if stmts.visit(&mut walk).is_break() {
        return None;
    }
    let mut out: Vec<usize> = walk
        .seen
        .iter()
        .filter(|(i, n)| **n == 1 && walk.allowed.get(i) == Some(&1))
        .map(|(i, _)| *i)
        .collect();
    out.sort_unstable();
    Some(out)
}

#[derive(Default)]
struct Walk {
    /// How often each sentinel appears as a value anywhere.
    seen: HashMap<usize, usize>,
    /// How often each appears in a parameter position.
    allowed: HashMap<usize, usize>,
}

impl Walk {
    /// Counts `e` as a literal in a parameter position, when it is a sentinel.
    fn operand(&mut self, e: &Expr) {
        if let Some(i) = sentinel(e) {
            *self.allowed.entry(i).or_default() += 1;
        }
    }
}

fn sentinel(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(s, false) | Value::SingleQuotedString(s) => sentinel_index(s),
            _ => None,
        },
        _ => None,
    }
}

impl Visitor for Walk {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Value(v) = e {
            if matches!(v.value, Value::Placeholder(_)) {
                return ControlFlow::Break(());
            }
        }
        if let Some(i) = sentinel(e) {
            *self.seen.entry(i).or_default() += 1;
        }
        match e {
            Expr::BinaryOp { left, right, .. } => {
                self.operand(left);
                self.operand(right);
            }
            Expr::UnaryOp {
                op: UnaryOperator::Minus | UnaryOperator::Plus,
                expr,
            } => self.operand(expr),
            Expr::Between { low, high, .. } => {
                self.operand(low);
                self.operand(high);
            }
            Expr::InList { list, .. } => list.iter().for_each(|e| self.operand(e)),
            Expr::Cast {
                kind: CastKind::Cast | CastKind::DoubleColon,
                expr,
                format: None,
                ..
            } => self.operand(expr),
            Expr::Like {
                pattern,
                escape_char: None,
                any: false,
                ..
            }
            | Expr::ILike {
                pattern,
                escape_char: None,
                any: false,
                ..
            } => self.operand(pattern),
            Expr::Function(f) => {
                if let FunctionArguments::List(list) = &f.args {
                    for arg in &list.args {
                        if let FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) = arg {
                            self.operand(e);
                        }
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// The parameter type of a number literal's token, as PostgreSQL types the literal: `int4` when
/// it fits, then `int8`, else `numeric` (and `numeric` for one with a decimal point).
pub fn number_type(token: &str) -> u32 {
    const INT4: u32 = 23;
    const INT8: u32 = 20;
    const NUMERIC: u32 = 1700;
    if token.contains('.') {
        NUMERIC
    } else if token.parse::<i32>().is_ok() {
        INT4
    } else if token.parse::<i64>().is_ok() {
        INT8
    } else {
        NUMERIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::shape::normalize;

    /// The literals of `sql` (by their text) that would be parameters.
    fn params(sql: &str) -> Vec<String> {
        let n = normalize(sql).expect("literals");
        let sentinels = n.sentinel_text(sql);
        let allowed = parameter_literals(&sentinels).expect("parses");
        allowed
            .iter()
            .map(|&i| n.literal(sql, i).to_string())
            .collect()
    }

    #[test]
    fn operands_casts_lists_and_arguments_are_parameters() {
        assert_eq!(
            params(
                "SELECT a FROM t WHERE ts = '2026-01-01'::timestamptz + 5 * interval '1 minute'"
            ),
            ["'2026-01-01'", "5"]
        );
        assert_eq!(
            params("SELECT a FROM t WHERE x IN (1, 2) AND y BETWEEN 3 AND 4.5 AND z LIKE 'a%'"),
            ["1", "2", "3", "4.5", "'a%'"]
        );
        assert_eq!(params("SELECT round(a, 2), -7 FROM t"), ["2", "7"]);
    }

    #[test]
    fn grammar_and_output_positions_keep_their_literals() {
        for sql in [
            "SELECT a, 'x' FROM t ORDER BY 1",
            "SELECT a FROM t GROUP BY 1 LIMIT 10 OFFSET 5",
            "SELECT a FROM t WHERE d > DATE '2026-01-01'",
            "SELECT a::numeric(18, 6) FROM t WHERE i < INTERVAL '1' DAY",
            "SELECT a FROM t WHERE x = (5)",
            "SELECT a FROM t WHERE s LIKE 'a!%' ESCAPE '!'",
        ] {
            assert!(params(sql).is_empty(), "{sql}: {:?}", params(sql));
        }
    }

    #[test]
    fn a_literal_twice_or_a_text_with_parameters_is_not_bound() {
        let n = normalize("SELECT a FROM t WHERE x = 5").unwrap();
        let s = n.sentinel_text("SELECT a FROM t WHERE x = 5");
        let twice = format!("{s} AND y = {}", &s[s.len() - 11..]);
        assert_eq!(parameter_literals(&twice), Some(vec![]));
        assert_eq!(parameter_literals(&format!("{s} AND y = $1")), None);
        assert_eq!(parameter_literals("SELECT ("), None);
    }

    #[test]
    fn numbers_are_typed_as_their_literals() {
        assert_eq!(number_type("5"), 23);
        assert_eq!(number_type("2147483648"), 20);
        assert_eq!(number_type("99999999999999999999"), 1700);
        assert_eq!(number_type("1.50"), 1700);
    }
}
