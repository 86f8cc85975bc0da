//! Whether a read stays within its rules' `where`: the secondary holds only the migrated rows,
//! so a read of a source table with a `where` is served there only when the conditions that
//! restrict each reference to it imply that `where` ([`super::prove`]), possibly once bound
//! parameters pass a check at Bind. The `where`'s conditions written out again in the query's
//! WHERE (or met by a parameter bound to the same text) still count, as they always did.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, visit_expressions_mut, BinaryOperator, Expr, Ident, JoinConstraint,
    JoinOperator, Query, Select, SetExpr, Statement, TableFactor, TableWithJoins, Value, Visit,
    Visitor,
};

use super::formula::{literals, Scope};
use super::prove::{Deferred, Prover, F, V};
use super::value::Ty;
use crate::rules::{Rule, RuleSet, TableName};
use crate::sql::view::{fold, resolve};

/// What keeps a read within its rules' `where`.
#[derive(Debug, Default, PartialEq)]
pub struct Covered {
    /// Checks of bound parameters, all of which must hold at Bind.
    pub checks: Vec<Deferred>,
    /// A proof rested on a literal of the query that no `where` names: the analysis holds for
    /// this text only, not for its shape with other literals.
    pub literal_based: bool,
}

/// Whether the query reads every source table of a rule with a `where` only within that
/// `where` (the target has the migrated rows only, so another read cannot be answered there).
/// A reference is restricted by the WHERE of the SELECT that names it and by the ON of its
/// inner joins (an outer join's nullable side by its own ON, and by the rest only through
/// conditions that a NULL row fails); its columns bare or qualified by the reference's alias
/// (bare ones only when that SELECT reads one table). Returns the checks deferred to Bind, or
/// the first table read beyond its `where`.
pub(super) fn coverage(stmt: &Statement, rules: &RuleSet) -> Result<Covered, TableName> {
    if rules.rules().iter().all(|r| r.filter.is_none()) {
        return Ok(Covered::default());
    }
    let mut c = Coverage {
        rules,
        ctes: Vec::new(),
        found: None,
        covered: Covered::default(),
        single_params: single_params(stmt),
    };
    let _ = stmt.visit(&mut c);
    match c.found {
        Some(t) => Err(t),
        None => Ok(c.covered),
    }
}

/// The parameters a statement names exactly once.
fn single_params(stmt: &Statement) -> HashSet<usize> {
    let mut counts: HashMap<usize, usize> = HashMap::new();
    let _ = visit_expressions(stmt, |e| {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &v.value {
                if let Some(n) = p.strip_prefix('$').and_then(|n| n.parse().ok()) {
                    *counts.entry(n).or_default() += 1;
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    counts
        .into_iter()
        .filter(|(_, c)| *c == 1)
        .map(|(n, _)| n)
        .collect()
}

struct Coverage<'r> {
    rules: &'r RuleSet,
    ctes: Vec<String>,
    found: Option<TableName>,
    covered: Covered,
    single_params: HashSet<usize>,
}

impl Visitor for Coverage<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.push(cte.alias.name.value.to_lowercase());
            }
        }
        self.body(&q.body)
    }
}

/// A condition restricting a reference; `true` when only its parts a NULL row fails count.
type Premise<'a> = (&'a Expr, bool);

impl Coverage<'_> {
    fn body(&mut self, body: &SetExpr) -> ControlFlow<()> {
        match body {
            SetExpr::Select(select) => self.select(select),
            SetExpr::SetOperation { left, right, .. } => {
                self.body(left)?;
                self.body(right)
            }
            _ => ControlFlow::Continue(()),
        }
    }

    /// Each source table with a `where` that `select` names must be read within it.
    fn select(&mut self, select: &Select) -> ControlFlow<()> {
        let mut refs = Vec::new();
        let outer: Vec<Premise> = select.selection.iter().map(|w| (w, false)).collect();
        for t in &select.from {
            walk(t, &outer, &mut refs);
        }
        let alone = refs.len() == 1;
        for (factor, premises) in &refs {
            let TableFactor::Table { name, alias, .. } = factor else {
                continue;
            };
            let Some(table) = resolve(name) else { continue };
            if name.0.len() == 1 && self.ctes.contains(&table.name) {
                continue;
            }
            let Some(rule) = self.rules.get(&table).filter(|r| r.filter.is_some()) else {
                continue;
            };
            let qualifier = match alias {
                Some(a) => fold(&a.name),
                None => table.name.clone(),
            };
            if !self.within(rule, select, premises, &qualifier, alone) {
                self.found = Some(table);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// Whether the reference (`qualifier`) restricted by `premises` stays within the rule's
    /// `where`, by proof or, failing that, by the conditions written out again; notes the
    /// checks that must hold at Bind.
    fn within(
        &mut self,
        rule: &Rule,
        select: &Select,
        premises: &[Premise],
        qualifier: &str,
        alone: bool,
    ) -> bool {
        let filter = rule.filter.as_deref().unwrap_or("TRUE");
        let Ok(goal) = crate::rules::check::parse_expression(filter) else {
            return false;
        };
        let cols = column_types(rule);
        let rule_literals = literals(&goal);
        let none = HashSet::new();
        let scope = |qualifier, alone, single_params| Scope {
            qualifier,
            alone,
            cols: &cols,
            rule_literals: &rule_literals,
            single_params,
        };
        let goal = scope("", true, &none).formula(&goal, false);
        let query = scope(qualifier, alone, &self.single_params);
        let premise = F::And(
            premises
                .iter()
                .map(|(e, strict)| strictly(query.formula(e, false), *strict))
                .collect(),
        );
        let prover = Prover::default();
        match prover.implies(&premise, &goal) {
            V::Yes => {}
            V::Maybe(d) => self.covered.checks.push(d),
            V::No => return self.written_out(filter, select, qualifier, alone),
        }
        self.covered.literal_based |= prover.literal_based();
        true
    }
}

impl Coverage<'_> {
    /// The rule's conditions written out again in the WHERE (or met by parameters bound to
    /// the same text), as before the prover.
    fn written_out(&mut self, filter: &str, select: &Select, qualifier: &str, alone: bool) -> bool {
        let have: Vec<String> = select
            .selection
            .iter()
            .flat_map(|w| conjuncts(w))
            .filter_map(|c| canonical(c, qualifier, alone))
            .collect();
        let Some(params) = restriction(filter, &have) else {
            return false;
        };
        let bytes = params.into_iter().map(|(n, v)| Deferred::Bytes(n, v));
        self.covered.checks.extend(bytes);
        true
    }
}

/// The comparison types of the rule's source columns (none while they are unknown).
fn column_types(rule: &Rule) -> HashMap<String, Ty> {
    rule.source_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), Ty::of_column(&c.type_name)))
        .collect()
}

/// `f` as a premise of a row that may be NULL-extended (`strict`): only its comparisons of
/// known types, which are not TRUE for a NULL, count.
fn strictly(f: F, strict: bool) -> F {
    if !strict {
        return f;
    }
    match f {
        F::And(v) => F::And(v.into_iter().map(|f| strictly(f, true)).collect()),
        F::Or(v) => F::Or(v.into_iter().map(|f| strictly(f, true)).collect()),
        F::Atom(a) if a.ty != Ty::Other && a.op != super::prove::Op::IsNull => F::Atom(a),
        _ => F::Unknown,
    }
}

/// The table references of a FROM item, each with the conditions that restrict its rows:
/// `outer` and the ON of inner joins for all; a LEFT JOIN's right side also by its own ON, and
/// by the others only strictly (it may be NULL-extended); with a RIGHT or FULL JOIN (or any
/// other), every reference only strictly by `outer` and the inner ONs.
fn walk<'a>(
    t: &'a TableWithJoins,
    outer: &[Premise<'a>],
    out: &mut Vec<(&'a TableFactor, Vec<Premise<'a>>)>,
) {
    let mut common = outer.to_vec();
    let mut plain = true;
    for j in &t.joins {
        match &j.join_operator {
            JoinOperator::Join(c) | JoinOperator::Inner(c) => {
                common.extend(on(c).map(|e| (e, false)))
            }
            JoinOperator::CrossJoin(_) | JoinOperator::Left(_) | JoinOperator::LeftOuter(_) => {}
            _ => plain = false,
        }
    }
    let strict: Vec<Premise> = common.iter().map(|(e, _)| (*e, true)).collect();
    if !plain {
        common = strict.clone();
    }
    factor(&t.relation, &common, out);
    for j in &t.joins {
        match &j.join_operator {
            JoinOperator::Left(c) | JoinOperator::LeftOuter(c) if plain => {
                let mut own = strict.clone();
                own.extend(on(c).map(|e| (e, false)));
                factor(&j.relation, &own, out);
            }
            _ => factor(&j.relation, &common, out),
        }
    }
}

fn on(c: &JoinConstraint) -> Option<&Expr> {
    match c {
        JoinConstraint::On(e) => Some(e),
        _ => None,
    }
}

fn factor<'a>(
    f: &'a TableFactor,
    premises: &[Premise<'a>],
    out: &mut Vec<(&'a TableFactor, Vec<Premise<'a>>)>,
) {
    match f {
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => walk(table_with_joins, premises, out),
        other => out.push((other, premises.to_vec())),
    }
}

/// The parameters that keep a SELECT whose conditions are `have` (canonical) within the
/// rule's `where` (`filter`): empty when each condition of `filter` is one of `have`; `None`
/// when one is neither there nor met by a bound parameter.
fn restriction(filter: &str, have: &[String]) -> Option<Vec<(usize, String)>> {
    let f = crate::rules::check::parse_expression(filter).ok()?;
    let mut params = Vec::new();
    for c in conjuncts(&f) {
        let c = canonical(c, "", true)?;
        if !have.contains(&c) {
            params.push(bound_param(&c, have)?);
        }
    }
    Some(params)
}

/// A condition `col = 'v'` met by a `col = $n` of the query: `(n, v)`.
fn bound_param(c: &str, have: &[String]) -> Option<(usize, String)> {
    let (col, v) = c.split_once(" = '")?;
    let v = v.strip_suffix('\'')?;
    let n = have.iter().find_map(|h| {
        h.strip_prefix(col)?
            .strip_prefix(" = $")?
            .parse::<usize>()
            .ok()
    })?;
    (!v.contains('\'')).then(|| (n, v.to_string()))
}

/// The AND-ed conditions of an expression.
fn conjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut v = conjuncts(left);
            v.extend(conjuncts(right));
            v
        }
        Expr::Nested(inner)
            if matches!(
                **inner,
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(inner)
        }
        other => vec![other],
    }
}

/// A condition as text with its column names folded and unqualified: `None` when it names a
/// column of another reference, or a bare column where that is ambiguous (`alone` false).
pub(super) fn canonical(e: &Expr, qualifier: &str, alone: bool) -> Option<String> {
    let mut e = e.clone();
    let mut ok = true;
    let _ = visit_expressions_mut(&mut e, |x| {
        match x {
            Expr::Identifier(i) => {
                ok &= alone;
                *i = Ident::new(fold(i));
            }
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [q, col] if fold(q) == qualifier => *x = Expr::Identifier(Ident::new(fold(col))),
                // schema.table.column
                [_, q, col] if fold(q) == qualifier => *x = Expr::Identifier(Ident::new(fold(col))),
                _ => ok = false,
            },
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    ok.then(|| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::view::tests::dxy_rule;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    /// The coverage of `sql` under `rule`.
    fn covered_by(sql: &str, rule: Rule) -> Result<Covered, TableName> {
        let stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        coverage(&stmt, &RuleSet::new(vec![rule]))
    }

    /// The coverage of `sql` under the DXY rule (`where symbol = 'DXY'`).
    fn covered(sql: &str) -> Result<Covered, TableName> {
        covered_by(sql, dxy_rule())
    }

    /// The DXY rule with `where symbol IN ('DXY', 'EURX')`.
    fn two_symbols() -> Rule {
        let mut rule = dxy_rule();
        rule.filter = Some("symbol IN ('DXY', 'EURX')".into());
        rule
    }

    /// Whether the checks hold with `$n` bound to text `params[n - 1]`.
    fn holds(c: &Covered, params: &[&str]) -> bool {
        c.checks.iter().all(|d| {
            d.holds(&|n| {
                Some(crate::sql::read::Bound {
                    format: 0,
                    type_oid: 0,
                    value: Some(params.get(n - 1)?.as_bytes()),
                })
            })
        })
    }

    #[test]
    fn a_read_within_the_where_is_covered() {
        let ok = covered("SELECT * FROM derived_data_bars WHERE symbol = 'DXY' AND ts > now()");
        assert_eq!(ok, Ok(Covered::default()));
        let ok = covered("SELECT b.ts FROM public.derived_data_bars b WHERE b.Symbol = 'DXY'");
        assert_eq!(ok, Ok(Covered::default()));
        let bound =
            covered("SELECT * FROM derived_data_bars b WHERE ts > $1 AND b.symbol = $2").unwrap();
        assert_eq!(bound.checks.len(), 1);
        assert!(holds(&bound, &["x", "DXY"]));
        assert!(!holds(&bound, &["x", "EUR"]));
        let shadowed =
            covered("WITH derived_data_bars AS (SELECT 1) SELECT * FROM derived_data_bars");
        assert_eq!(shadowed, Ok(Covered::default()));
    }

    #[test]
    fn a_read_beyond_the_where_names_its_table() {
        let table = TableName::new("public", "derived_data_bars");
        for sql in [
            "SELECT * FROM derived_data_bars",
            "SELECT * FROM derived_data_bars WHERE symbol = 'EUR'",
            "SELECT * FROM derived_data_bars WHERE symbol = 'DXY' OR volume > 0",
            // A bare column is ambiguous beside another table.
            "SELECT * FROM derived_data_bars b JOIN other o ON o.ts = b.ts WHERE symbol = 'DXY'",
            "SELECT 1 FROM t WHERE x IN (SELECT ts FROM derived_data_bars)",
        ] {
            assert_eq!(covered(sql), Err(table.clone()), "{sql}");
        }
    }

    #[test]
    fn every_reference_of_a_statement_is_proven() {
        for sql in [
            "SELECT * FROM derived_data_bars WHERE symbol = 'EURX' AND volume > 0",
            "SELECT * FROM derived_data_bars WHERE symbol IN ('DXY', 'EURX')",
            "SELECT * FROM derived_data_bars b JOIN instruments i ON i.symbol = b.symbol \
             AND b.symbol = 'DXY'",
            "SELECT * FROM instruments i JOIN derived_data_bars b ON i.symbol = b.symbol \
             WHERE b.symbol IN ('DXY') AND i.description <> ''",
            "SELECT * FROM instruments i LEFT JOIN derived_data_bars b \
             ON b.symbol = i.symbol AND b.symbol = 'EURX'",
            "WITH d AS (SELECT * FROM derived_data_bars WHERE symbol = 'DXY') SELECT * FROM d",
            "SELECT 1 FROM instruments WHERE symbol IN \
             (SELECT symbol FROM derived_data_bars WHERE symbol = 'DXY')",
            "SELECT ts FROM derived_data_bars WHERE symbol = 'DXY' \
             UNION SELECT ts FROM derived_data_bars WHERE symbol = 'EURX'",
            "SELECT * FROM (SELECT * FROM derived_data_bars x WHERE x.symbol = 'DXY') s",
        ] {
            assert_eq!(
                covered_by(sql, two_symbols()),
                Ok(Covered::default()),
                "{sql}"
            );
        }
    }

    #[test]
    fn a_reference_left_unrestricted_is_not_proven() {
        let table = TableName::new("public", "derived_data_bars");
        for sql in [
            // A LEFT JOIN's ON does not restrict its left side.
            "SELECT * FROM derived_data_bars b LEFT JOIN instruments i \
             ON i.symbol = b.symbol AND b.symbol = 'DXY'",
            // A NULL-extended row passes `IS NULL`.
            "SELECT * FROM instruments i LEFT JOIN derived_data_bars b ON b.symbol = i.symbol \
             WHERE b.symbol IS NULL OR b.symbol = 'DXY'",
            "SELECT * FROM derived_data_bars b FULL JOIN instruments i ON b.symbol = 'DXY'",
            // One arm of a UNION escapes.
            "SELECT ts FROM derived_data_bars WHERE symbol = 'DXY' \
             UNION SELECT ts FROM derived_data_bars",
            // The outer WHERE does not restrict a subquery's reference.
            "SELECT * FROM (SELECT * FROM derived_data_bars) s WHERE s.symbol = 'DXY'",
            "SELECT * FROM derived_data_bars b JOIN derived_data_bars c ON c.ts = b.ts \
             WHERE b.symbol = 'DXY'",
        ] {
            assert_eq!(covered_by(sql, two_symbols()), Err(table.clone()), "{sql}");
        }
    }

    #[test]
    fn parameters_used_twice_or_literals_of_the_query_mark_the_proof() {
        let twice = "SELECT * FROM derived_data_bars WHERE symbol = $1 AND length($1) = 3";
        assert!(covered_by(twice, two_symbols()).is_err());
        let mut rule = dxy_rule();
        rule.filter = Some("volume > 5".into());
        let c = covered_by(
            "SELECT * FROM derived_data_bars WHERE volume > 10",
            rule.clone(),
        );
        assert!(c.unwrap().literal_based, "the proof rests on 10");
        let c = covered_by("SELECT * FROM derived_data_bars WHERE volume > 5", rule);
        assert!(!c.unwrap().literal_based, "5 is the rule's own");
    }
}
