//! The implication prover: does a query's restriction on one table reference imply its rule's
//! `where`, so that every row the query can read there is a migrated row? Conditions become
//! formulas of AND, OR and atoms (`col op value`, `col IS [NOT] NULL`), proven the way
//! PostgreSQL's predicate_implied_by proves a partial index usable. A proof that rests on a
//! parameter's value is deferred to Bind ([`Deferred`]); what cannot be proven is not claimed.

use std::cell::Cell;

use sqlparser::ast::BinaryOperator;

use super::value::{decode, Ty, Val};

/// A comparison of a column with a value, or a null test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    IsNull,
    NotNull,
}

impl Op {
    /// The condition that is TRUE exactly when this one is FALSE (SQL's NOT).
    pub(super) fn negated(self) -> Op {
        match self {
            Op::Eq => Op::Ne,
            Op::Ne => Op::Eq,
            Op::Lt => Op::Ge,
            Op::Le => Op::Gt,
            Op::Gt => Op::Le,
            Op::Ge => Op::Lt,
            Op::IsNull => Op::NotNull,
            Op::NotNull => Op::IsNull,
        }
    }

    /// `v op col` as `col op' v`.
    pub(super) fn flipped(self) -> Op {
        match self {
            Op::Lt => Op::Gt,
            Op::Le => Op::Ge,
            Op::Gt => Op::Lt,
            Op::Ge => Op::Le,
            o => o,
        }
    }

    pub(super) fn of(op: &BinaryOperator) -> Option<Op> {
        Some(match op {
            BinaryOperator::Eq => Op::Eq,
            BinaryOperator::NotEq => Op::Ne,
            BinaryOperator::Lt => Op::Lt,
            BinaryOperator::LtEq => Op::Le,
            BinaryOperator::Gt => Op::Gt,
            BinaryOperator::GtEq => Op::Ge,
            _ => return None,
        })
    }
}

/// What a column is compared with.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Rhs {
    /// A literal; `ruled` when the rule's `where` names the same literal (the shape cache keeps
    /// those in its keys, so a proof from them holds for every text of the shape).
    Lit { val: Val, ruled: bool },
    /// `$n`, read as the type given (the column's, or the cast's).
    Param(usize, Ty),
    /// Nothing (a null test), or what only its text matches.
    Other,
}

/// `col op rhs`; `text` is the canonical text of the right side, for identical conditions.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Atom {
    pub(super) col: String,
    pub(super) ty: Ty,
    pub(super) op: Op,
    pub(super) rhs: Rhs,
    pub(super) text: String,
}

/// A formula over one reference.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum F {
    And(Vec<F>),
    Or(Vec<F>),
    Atom(Atom),
    /// A condition matched only by its canonical text.
    Opaque(String),
    /// Names another reference, or cannot be read: implies nothing.
    Unknown,
}

impl F {
    /// SQL's NOT, pushed down to the leaves (De Morgan holds in SQL's three-valued logic, and
    /// the NOT of a comparison is TRUE exactly when its negated comparison is).
    pub(super) fn negate(self) -> F {
        match self {
            F::Atom(a) => F::Atom(Atom {
                op: a.op.negated(),
                ..a
            }),
            F::Opaque(t) => F::Opaque(format!("NOT ({t})")),
            F::And(v) => F::Or(v.into_iter().map(F::negate).collect()),
            F::Or(v) => F::And(v.into_iter().map(F::negate).collect()),
            F::Unknown => F::Unknown,
        }
    }
}

/// A check of bound parameters, deferred to Bind.
#[derive(Debug, Clone, PartialEq)]
pub enum Deferred {
    All(Vec<Deferred>),
    Any(Vec<Deferred>),
    /// `col op $n` (read as `ty`) implies `col goal_op goal` for the value bound to `$n`.
    Param {
        n: usize,
        ty: Ty,
        col: Ty,
        op: Op,
        goal_op: Op,
        goal: Val,
    },
    /// `$n` is bound, in any format, to exactly these bytes.
    Bytes(usize, String),
}

/// A bound parameter as Bind carries it.
#[derive(Debug, Clone, Copy)]
pub struct Bound<'a> {
    /// 0 text, 1 binary.
    pub format: u16,
    /// The type the client declared in Parse; 0 when it did not.
    pub type_oid: u32,
    /// `None` for NULL.
    pub value: Option<&'a [u8]>,
}

impl Deferred {
    /// Whether the check holds for the bound parameters (`bound(n)` is `None` when `$n` is not
    /// bound). A NULL or a value that cannot be decoded does not hold.
    pub fn holds<'a>(&self, bound: &impl Fn(usize) -> Option<Bound<'a>>) -> bool {
        match self {
            Deferred::All(v) => v.iter().all(|d| d.holds(bound)),
            Deferred::Any(v) => v.iter().any(|d| d.holds(bound)),
            Deferred::Bytes(n, text) => bound(*n).and_then(|b| b.value) == Some(text.as_bytes()),
            Deferred::Param {
                n,
                ty,
                col,
                op,
                goal_op,
                goal,
            } => {
                let Some(b) = bound(*n) else { return false };
                let value = b
                    .value
                    .and_then(|v| decode(v, b.format, b.type_oid, *ty, *col));
                value.is_some_and(|v| lit_implies(*op, &v, *goal_op, goal, *col))
            }
        }
    }
}

/// The outcome of a proof: proven, not proven, or proven when bound parameters pass a check.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum V {
    Yes,
    No,
    Maybe(Deferred),
}

fn either(a: V, b: V) -> V {
    match (a, b) {
        (V::Yes, _) | (_, V::Yes) => V::Yes,
        (V::No, x) | (x, V::No) => x,
        (V::Maybe(Deferred::Any(mut v)), V::Maybe(d)) => {
            v.push(d);
            V::Maybe(Deferred::Any(v))
        }
        (V::Maybe(a), V::Maybe(b)) => V::Maybe(Deferred::Any(vec![a, b])),
    }
}

fn both(a: V, b: V) -> V {
    match (a, b) {
        (V::No, _) | (_, V::No) => V::No,
        (V::Yes, x) | (x, V::Yes) => x,
        (V::Maybe(Deferred::All(mut v)), V::Maybe(d)) => {
            v.push(d);
            V::Maybe(Deferred::All(v))
        }
        (V::Maybe(a), V::Maybe(b)) => V::Maybe(Deferred::All(vec![a, b])),
    }
}

/// Proof steps before giving up (long IN lists on both sides multiply).
const BUDGET: usize = 100_000;

/// One proof: counts its steps and notes whether it rested on a literal of the query that the
/// rule's `where` does not name.
#[derive(Default)]
pub(super) struct Prover {
    steps: Cell<usize>,
    literal_based: Cell<bool>,
}

impl Prover {
    /// Whether a proof so far rested on a query literal the rule does not name.
    pub(super) fn literal_based(&self) -> bool {
        self.literal_based.get()
    }

    /// Whether every row for which `p` is TRUE has `c` TRUE.
    pub(super) fn implies(&self, p: &F, c: &F) -> V {
        self.steps.set(self.steps.get() + 1);
        if self.steps.get() > BUDGET {
            return V::No;
        }
        match (p, c) {
            (_, F::And(cs)) => cs.iter().fold(V::Yes, |acc, c| match acc {
                V::No => V::No,
                acc => both(acc, self.implies(p, c)),
            }),
            (F::Or(ps), _) => ps.iter().fold(V::Yes, |acc, p| match acc {
                V::No => V::No,
                acc => both(acc, self.implies(p, c)),
            }),
            (F::And(ps), F::Or(cs)) => {
                let whole = ps
                    .iter()
                    .fold(V::No, |acc, p| either(acc, self.implies(p, c)));
                cs.iter().fold(whole, |acc, c| match acc {
                    V::Yes => V::Yes,
                    acc => either(acc, self.implies(p, c)),
                })
            }
            (F::And(ps), _) => ps.iter().fold(V::No, |acc, p| match acc {
                V::Yes => V::Yes,
                acc => either(acc, self.implies(p, c)),
            }),
            (_, F::Or(cs)) => cs.iter().fold(V::No, |acc, c| match acc {
                V::Yes => V::Yes,
                acc => either(acc, self.implies(p, c)),
            }),
            (F::Opaque(a), F::Opaque(b)) if a == b => V::Yes,
            (F::Atom(a), F::Atom(b)) => self.atom_implies(a, b),
            _ => V::No,
        }
    }

    /// One atom implies another of the same column.
    fn atom_implies(&self, p: &Atom, c: &Atom) -> V {
        if p.col != c.col {
            return V::No;
        }
        let same = p.op == c.op && p.text == c.text;
        if same && !matches!(p.rhs, Rhs::Lit { ruled: false, .. }) {
            return V::Yes;
        }
        let comparison = !matches!(p.op, Op::IsNull | Op::NotNull);
        match (c.op, &p.rhs, &c.rhs) {
            _ if same => self.rests_on_literal(V::Yes),
            // Comparisons are strict: TRUE only when the column is not NULL.
            (Op::NotNull, _, _) if p.op == Op::NotNull => V::Yes,
            (Op::NotNull, Rhs::Lit { .. } | Rhs::Param(..), _) if comparison => V::Yes,
            (Op::IsNull | Op::NotNull, _, _) | (_, _, Rhs::Other | Rhs::Param(..)) => V::No,
            _ if !comparison || p.ty != c.ty => V::No,
            (_, Rhs::Lit { val, ruled }, Rhs::Lit { val: goal, .. }) => {
                match lit_implies(p.op, val, c.op, goal, p.ty) {
                    true if *ruled => V::Yes,
                    true => self.rests_on_literal(V::Yes),
                    false => V::No,
                }
            }
            (_, Rhs::Param(n, ty), Rhs::Lit { val: goal, .. }) => V::Maybe(Deferred::Param {
                n: *n,
                ty: *ty,
                col: p.ty,
                op: p.op,
                goal_op: c.op,
                goal: goal.clone(),
            }),
            _ => V::No,
        }
    }

    fn rests_on_literal(&self, v: V) -> V {
        self.literal_based.set(true);
        v
    }
}

/// Whether `col po pv` TRUE implies `col co cv` TRUE for a column of type `ty`.
fn lit_implies(po: Op, pv: &Val, co: Op, cv: &Val, ty: Ty) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let Some(ord) = pv.order(cv) else {
        return false;
    };
    let eq = ord == Equal;
    if !ty.ordered() {
        // Without a known order, only the same value: `col < v` implies `col <= v`, and so on
        // (any collation orders totally); `col = a` implies `col <> b` for distinct values.
        return match (po, co) {
            (Op::Eq, Op::Ne) => ty.distinct() && !eq,
            (Op::Eq, Op::Eq | Op::Le | Op::Ge)
            | (Op::Ne, Op::Ne)
            | (Op::Lt, Op::Lt | Op::Le | Op::Ne)
            | (Op::Le, Op::Le)
            | (Op::Gt, Op::Gt | Op::Ge | Op::Ne)
            | (Op::Ge, Op::Ge) => eq,
            _ => false,
        };
    }
    match (po, co) {
        (Op::Eq, Op::Eq) => eq,
        (Op::Eq, Op::Ne) => !eq,
        (Op::Eq, Op::Lt) => ord == Less,
        (Op::Eq, Op::Le) => ord != Greater,
        (Op::Eq, Op::Gt) => ord == Greater,
        (Op::Eq, Op::Ge) => ord != Less,
        (Op::Ne, Op::Ne) => eq,
        (Op::Lt, Op::Lt | Op::Le | Op::Ne) => ord != Greater,
        (Op::Le, Op::Le) => ord != Greater,
        (Op::Le, Op::Lt | Op::Ne) => ord == Less,
        (Op::Gt, Op::Gt | Op::Ge | Op::Ne) => ord != Less,
        (Op::Ge, Op::Ge) => ord != Less,
        (Op::Ge, Op::Gt | Op::Ne) => ord == Greater,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::super::formula::{literals, Scope};
    use super::*;
    use crate::rules::check::parse_expression;

    /// The columns of the tests: a text, a timestamptz, a date, a timestamp, a numeric, a
    /// bigint, a boolean and a double precision (which the prover does not compare).
    fn cols() -> HashMap<String, Ty> {
        [
            ("symbol", "text"),
            ("ts", "timestamp with time zone"),
            ("day", "date"),
            ("at", "timestamp without time zone"),
            ("close", "numeric(18,6)"),
            ("volume", "bigint"),
            ("flag", "boolean"),
            ("price", "double precision"),
        ]
        .into_iter()
        .map(|(c, t)| (c.to_string(), Ty::of_column(t)))
        .collect()
    }

    /// Whether the query's condition `query` (over reference `b`) implies `rule`.
    fn prove(query: &str, rule: &str) -> V {
        let (q, r) = (
            parse_expression(query).unwrap(),
            parse_expression(rule).unwrap(),
        );
        let (cols, lits) = (cols(), literals(&r));
        let (single, none) = ((1..10).collect::<HashSet<usize>>(), HashSet::new());
        let scope = |qualifier, single_params| Scope {
            qualifier,
            alone: true,
            cols: &cols,
            rule_literals: &lits,
            single_params,
        };
        let premise = scope("b", &single).formula(&q, false);
        Prover::default().implies(&premise, &scope("", &none).formula(&r, false))
    }

    const IN: &str = "symbol IN ('DXY', 'EURX')";

    #[test]
    fn conditions_that_imply_the_where() {
        let ts_range = "ts BETWEEN '2026-01-01 00:00+00' AND '2026-12-31 00:00+00'";
        for (query, rule) in [
            ("symbol = 'DXY'", IN),
            ("b.symbol IN ('EURX', 'DXY')", IN),
            ("symbol = 'DXY' AND ts = '2026-01-05 14:30+00'", IN),
            ("(symbol = 'DXY' OR b.symbol = 'EURX') AND volume > 5", IN),
            ("'DXY' = symbol", IN),
            ("symbol = 'DXY'::text", IN),
            (
                "ts >= '2026-01-05 00:00:00+00' AND ts < '2026-01-06T00:00:00Z'",
                ts_range,
            ),
            ("ts = '2026-01-05 15:30+01'", "ts = '2026-01-05 14:30:00Z'"),
            ("close BETWEEN 100 AND 101", "close >= 99.5"),
            ("close = 100.000", "close = 100"),
            ("volume > 10", "volume > 9.5"),
            ("5 < volume", "volume > 4"),
            ("volume > -5", "volume > -10"),
            ("volume >= 10", "volume <> 3"),
            ("NOT (volume < 10)", "volume >= 5"),
            ("volume NOT BETWEEN 0 AND 10", "volume <> 5"),
            ("volume = CAST('7' AS bigint)", "volume BETWEEN 7 AND 8"),
            ("day = DATE '2026-01-05'", "day >= '2026-01-01'"),
            ("at >= '2026-01-05'::date", "at >= '2026-01-05 00:00:00'"),
            ("flag", "flag = true"),
            ("NOT flag", "flag = false"),
            ("symbol = 'DXY'", "symbol IS NOT NULL"),
            ("volume < 3", "volume IS NOT NULL"),
            (
                "symbol = 'DXY' AND volume > 0",
                "(symbol = 'DXY' AND volume > 0) OR symbol = 'X'",
            ),
            ("symbol IN ('DXY', 'EURX') AND volume > 0", IN),
            // Written out again: met whatever it is.
            (
                "ts > now() - interval '1 day'",
                "ts > now() - interval '1 day'",
            ),
            ("ts >= '2026-01-05'", "ts >= '2026-01-05'"),
        ] {
            assert_eq!(prove(query, rule), V::Yes, "{query} => {rule}");
        }
    }

    #[test]
    fn conditions_that_do_not_imply_the_where() {
        for (query, rule) in [
            ("symbol = 'EUR'", IN),
            ("symbol = 'DXY' OR volume > 0", IN),
            ("symbol = 'DXY' OR symbol = 'GBP'", IN),
            ("symbol <> 'EUR'", IN),
            ("symbol NOT IN ('EUR')", IN),
            ("symbol IS NULL", IN),
            ("symbol IS NOT NULL", "symbol <> 'X'"),
            // NULL rows: `<>` says nothing of them.
            ("symbol <> 'X'", "symbol IS NULL"),
            ("symbol = NULL", IN),
            ("o.symbol = 'DXY'", IN),
            ("lower(symbol) = 'dxy'", IN),
            ("volume < 10", "volume < 9"),
            ("volume <= 10", "volume < 10"),
            ("volume > 5", "volume = 6"),
            ("close > 100 AND close < 99", "close > 200"),
            ("day = '2026-02-30'", "day >= '2026-01-01'"),
            ("volume = CAST(5.5 AS bigint)", "volume = 6"),
            ("close = CAST('1.005' AS numeric(10,2))", "close = 1.01"),
        ] {
            assert_eq!(prove(query, rule), V::No, "{query} => {rule}");
        }
    }

    #[test]
    fn what_must_not_be_claimed() {
        for (query, rule) in [
            // Text ordering depends on the collation; `<>` of another value on whether it is
            // deterministic.
            ("symbol > 'D' AND symbol < 'E'", "symbol >= 'C'"),
            ("symbol = 'DXY'", "symbol >= 'A'"),
            ("symbol = 'DXY'", "symbol <> 'dxy'"),
            // A timestamptz without an offset depends on the session's TimeZone.
            ("ts >= '2026-01-05'", "ts >= '2026-01-01'"),
            ("ts >= '2026-01-05 00:00+00'", "ts >= '2026-01-01'"),
            // A timestamp ignores an offset.
            ("at >= '2026-01-05 00:00+05'", "at >= '2026-01-05 00:00'"),
            // Floats: a decimal literal is not the float it becomes.
            ("price < 0.1", "price < 0.2"),
            ("price = 0.1", "price <= 0.1"),
            ("at >= 'now'", "at >= '2026-01-01'"),
            ("close = 'NaN'", "close > 0"),
        ] {
            assert_eq!(prove(query, rule), V::No, "{query} => {rule}");
        }
    }

    /// The check deferred to Bind for `query`, run with `params` as (format, oid, value).
    fn bound(query: &str, rule: &str, params: &[(u16, u32, Option<&[u8]>)]) -> bool {
        let V::Maybe(d) = prove(query, rule) else {
            panic!("{query}: no check deferred");
        };
        d.holds(&|n| {
            let (format, type_oid, value) = *params.get(n - 1)?;
            Some(Bound {
                format,
                type_oid,
                value,
            })
        })
    }

    #[test]
    fn parameters_are_checked_at_bind() {
        let text = |s: &'static str| (0u16, 0u32, Some(s.as_bytes()));
        assert!(bound("symbol = $1", IN, &[text("DXY")]));
        assert!(!bound("symbol = $1", IN, &[text("EUR")]));
        assert!(!bound("symbol = $1", IN, &[(0, 0, None)]), "NULL");
        assert!(!bound("symbol = $1", IN, &[]), "not bound");
        assert!(bound("symbol = $1::text", IN, &[(1, 25, Some(b"EURX"))]));
        assert!(bound(
            "symbol IN ($1, $2)",
            IN,
            &[text("DXY"), text("EURX")]
        ));
        assert!(!bound(
            "symbol IN ($1, $2)",
            IN,
            &[text("DXY"), text("GBP")]
        ));
        assert!(bound(
            "symbol = $1 AND ts > $2",
            IN,
            &[text("DXY"), text("x")]
        ));
        let ten = 10i64.to_be_bytes();
        let three = 3i64.to_be_bytes();
        assert!(bound("volume > $1", "volume > 5", &[(1, 0, Some(&ten))]));
        assert!(!bound("volume > $1", "volume > 5", &[(1, 0, Some(&three))]));
        assert!(
            !bound("volume > $1", "volume > 5", &[(1, 0, Some(&ten[..4]))]),
            "an int4"
        );
        assert!(
            !bound("volume > $1", "volume > 5", &[(1, 701, Some(&ten))]),
            "a float8"
        );
        // 2026-01-05 00:00 UTC in microseconds since 2000-01-01.
        let micros = (20_458i64 - 10_957) * 86_400_000_000;
        let rule = "ts >= '2026-01-01 00:00+00'";
        assert!(bound(
            "ts >= $1",
            rule,
            &[(1, 1184, Some(&micros.to_be_bytes()))]
        ));
        assert!(bound("ts >= $1", rule, &[text("2026-01-05 00:00+00")]));
        assert!(
            !bound("ts >= $1", rule, &[text("2026-01-05 00:00")]),
            "no offset"
        );
        // 12.5 as a binary numeric.
        let n: &[u8] = &[0, 2, 0, 0, 0, 0, 0, 1, 0, 12, 0x13, 0x88];
        assert!(bound("close = $1", "close > 10", &[(1, 0, Some(n))]));
        assert!(!bound("close = $1", "close > 13", &[(1, 0, Some(n))]));
    }
}
