//! SQL conditions as the prover's formulas over one table reference: AND, OR, NOT (pushed down),
//! comparisons, BETWEEN, IN lists and null tests of the rule's source columns become atoms with
//! their literals read by the column's type; anything else is kept as its canonical text (met
//! only by the same text) or, when it names another reference, implies nothing.

use std::collections::{HashMap, HashSet};

use sqlparser::ast::{BinaryOperator, CastKind, Expr, UnaryOperator, Value};

use super::coverage::canonical;
use super::prove::{Atom, Op, Rhs, F};
use super::value::{Ty, Val};
use crate::sql::view::fold;

/// How a reference's columns are read: by `qualifier`, bare ones too when `alone`; the rule's
/// source columns with their comparison types; the literals the rule's `where` names; the
/// parameters the statement uses once (one used elsewhere might be given another type).
pub(super) struct Scope<'a> {
    pub qualifier: &'a str,
    pub alone: bool,
    pub cols: &'a HashMap<String, Ty>,
    pub rule_literals: &'a HashSet<String>,
    pub single_params: &'a HashSet<usize>,
}

/// The literals an expression names, as sqlparser renders them (`'DXY'`, `5`).
pub(super) fn literals(e: &Expr) -> HashSet<String> {
    let mut out = HashSet::new();
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        if let Expr::Value(v) = x {
            out.insert(v.value.to_string());
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    out
}

impl Scope<'_> {
    /// The formula of `e`, or of `NOT e` when `neg`.
    pub(super) fn formula(&self, e: &Expr, neg: bool) -> F {
        match e {
            Expr::Nested(inner) => self.formula(inner, neg),
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => self.formula(expr, !neg),
            Expr::BinaryOp {
                left,
                op: op @ (BinaryOperator::And | BinaryOperator::Or),
                right,
            } => {
                let parts = vec![self.formula(left, neg), self.formula(right, neg)];
                match (*op == BinaryOperator::And) != neg {
                    true => F::And(parts),
                    false => F::Or(parts),
                }
            }
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => self.between(e, expr, low, high, neg != *negated),
            Expr::InList {
                expr,
                list,
                negated,
            } if !list.is_empty() => self.in_list(e, expr, list, neg != *negated),
            Expr::BinaryOp { left, op, right } => match Op::of(op) {
                Some(op) => match self.compare(left, op, right) {
                    Some(f) => with_not(f, neg),
                    None => self.opaque(e, neg),
                },
                None => self.opaque(e, neg),
            },
            Expr::IsNull(x) | Expr::IsNotNull(x) => {
                self.null_test(e, x, matches!(e, Expr::IsNull(_)) != neg, neg)
            }
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => self.bare(e, neg),
            _ => self.opaque(e, neg),
        }
    }

    /// `x BETWEEN low AND high`, or its NOT (`neg`): `x >= low AND x <= high`.
    fn between(&self, e: &Expr, x: &Expr, low: &Expr, high: &Expr, neg: bool) -> F {
        match (self.compare(x, Op::Ge, low), self.compare(x, Op::Le, high)) {
            (Some(lo), Some(hi)) => with_not(F::And(vec![lo, hi]), neg),
            _ => self.opaque(e, false).negated_if(neg),
        }
    }

    /// `x IN (list)`, or its NOT (`neg`): an OR of equalities.
    fn in_list(&self, e: &Expr, x: &Expr, list: &[Expr], neg: bool) -> F {
        let arms: Option<Vec<F>> = list.iter().map(|v| self.compare(x, Op::Eq, v)).collect();
        match arms {
            Some(arms) => with_not(F::Or(arms), neg),
            None => self.opaque(e, false).negated_if(neg),
        }
    }

    /// `x IS NULL` (`is_null`) or `x IS NOT NULL`, as written under `neg` NOTs.
    fn null_test(&self, e: &Expr, x: &Expr, is_null: bool, neg: bool) -> F {
        match self.column(x) {
            Some((col, ty)) => {
                let op = if is_null { Op::IsNull } else { Op::NotNull };
                atom(col, ty, op, Rhs::Other, String::new())
            }
            None => self.opaque(e, neg),
        }
    }

    /// A boolean column on its own is `col = true`; NOT of it, `col = false`.
    fn bare(&self, e: &Expr, neg: bool) -> F {
        match self.column(e) {
            Some((col, Ty::Bool)) => {
                let val = Val::Bool(!neg);
                let text = if neg { "false" } else { "true" }.to_string();
                atom(col, Ty::Bool, Op::Eq, Rhs::Lit { val, ruled: true }, text)
            }
            _ => self.opaque(e, neg),
        }
    }

    /// `left op right` with one side a column of this reference and the other naming none:
    /// its atom (`Unknown` when the other side names another reference); `None` when neither
    /// or both sides are columns of it.
    fn compare(&self, left: &Expr, op: Op, right: &Expr) -> Option<F> {
        let ((col, ty), op, other) = match (self.column(left), self.column(right)) {
            (Some(c), None) => (c, op, right),
            (None, Some(c)) => (c, op.flipped(), left),
            _ => return None,
        };
        let Some(text) = canonical(other, self.qualifier, self.alone) else {
            return Some(F::Unknown);
        };
        if self.names_a_column(other) {
            return None;
        }
        let rhs = self.operand(other, ty);
        Some(atom(col, ty, op, rhs, text))
    }

    /// Whether `e` names a column of this reference (then it is no constant).
    fn names_a_column(&self, e: &Expr) -> bool {
        let mut found = false;
        let _ = sqlparser::ast::visit_expressions(e, |x| {
            found |= matches!(x, Expr::Identifier(_) | Expr::CompoundIdentifier(_));
            std::ops::ControlFlow::<()>::Continue(())
        });
        found
    }

    /// A column of this reference, with its comparison type.
    fn column(&self, e: &Expr) -> Option<(String, Ty)> {
        let name = match e {
            Expr::Identifier(i) if self.alone => fold(i),
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [q, c] | [_, q, c] if fold(q) == self.qualifier => fold(c),
                _ => return None,
            },
            _ => return None,
        };
        let ty = *self.cols.get(&name)?;
        Some((name, ty))
    }

    /// What a column of type `ty` is compared with: a literal read exactly as the column's
    /// type (or as the type it is cast to), a parameter, or what only its text matches.
    fn operand(&self, e: &Expr, ty: Ty) -> Rhs {
        let lit = |val: Option<Val>, raw: &Value| self.literal(val, raw);
        match e {
            Expr::Value(v) => match &v.value {
                raw @ Value::SingleQuotedString(s) => lit(Val::parse(s, ty, ty), raw),
                raw @ Value::Number(n, _) => lit(Val::parse(n, Ty::Numeric, ty), raw),
                raw @ Value::Boolean(b) if ty == Ty::Bool => lit(Some(Val::Bool(*b)), raw),
                Value::Placeholder(p) => self.param(p, ty, ty),
                _ => Rhs::Other,
            },
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => match expr.as_ref() {
                // The shape cache keeps or replaces the number's token, without its sign.
                Expr::Value(v) => match &v.value {
                    raw @ Value::Number(n, _) => {
                        lit(Val::parse(&format!("-{n}"), Ty::Numeric, ty), raw)
                    }
                    _ => Rhs::Other,
                },
                _ => Rhs::Other,
            },
            Expr::Cast {
                kind: CastKind::Cast | CastKind::DoubleColon,
                expr,
                data_type,
                format: None,
            } => self.cast(expr, Ty::of_cast(&data_type.to_string()), ty),
            Expr::TypedString(t) => match &t.value.value {
                raw @ Value::SingleQuotedString(s) => lit(
                    Val::parse(s, Ty::of_cast(&t.data_type.to_string()), ty),
                    raw,
                ),
                _ => Rhs::Other,
            },
            _ => Rhs::Other,
        }
    }

    /// A literal or parameter cast to type `cast`, compared with a column of type `ty`.
    fn cast(&self, e: &Expr, cast: Ty, ty: Ty) -> Rhs {
        let Expr::Value(v) = e else {
            return Rhs::Other;
        };
        match &v.value {
            raw @ (Value::SingleQuotedString(s) | Value::Number(s, _)) => {
                self.literal(Val::parse(s, cast, ty), raw)
            }
            Value::Placeholder(p) => self.param(p, cast, ty),
            _ => Rhs::Other,
        }
    }

    /// A literal read as `val` (none when not exact).
    fn literal(&self, val: Option<Val>, raw: &Value) -> Rhs {
        match val {
            Some(val) => Rhs::Lit {
                val,
                ruled: self.rule_literals.contains(&raw.to_string()),
            },
            None => Rhs::Other,
        }
    }

    /// `$n` read as `as_ty` against a column of type `col`: only a parameter the statement
    /// uses once, of a type the check at Bind can decode.
    fn param(&self, p: &str, as_ty: Ty, col: Ty) -> Rhs {
        match p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            Some(n)
                if self.single_params.contains(&n) && as_ty != Ty::Other && col != Ty::Other =>
            {
                Rhs::Param(n, as_ty)
            }
            _ => Rhs::Other,
        }
    }

    /// A condition matched only by its text.
    fn opaque(&self, e: &Expr, neg: bool) -> F {
        match canonical(e, self.qualifier, self.alone) {
            Some(t) => with_not(F::Opaque(t), neg),
            None => F::Unknown,
        }
    }
}

impl F {
    fn negated_if(self, neg: bool) -> F {
        with_not(self, neg)
    }
}

fn with_not(f: F, neg: bool) -> F {
    if neg {
        f.negate()
    } else {
        f
    }
}

fn atom(col: String, ty: Ty, op: Op, rhs: Rhs, text: String) -> F {
    F::Atom(Atom {
        col,
        ty,
        op,
        rhs,
        text,
    })
}
