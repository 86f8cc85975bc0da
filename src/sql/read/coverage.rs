//! Whether a read stays within its rules' `where`: the secondary holds only the migrated rows,
//! so a read of a source table with a `where` is served there only when the query itself asks
//! for those rows alone (its WHERE repeats the rule's conditions, or binds a parameter to
//! them).

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions_mut, BinaryOperator, Expr, Ident, Query, Select, SetExpr, Statement,
    TableFactor, Visit, Visitor,
};

use crate::rules::{RuleSet, TableName};
use crate::sql::view::{fold, resolve};

/// Whether the query reads every source table of a rule with a `where` only within that
/// `where` (the target has the migrated rows only, so another read cannot be answered there).
/// A reference is restricted when every AND-ed condition of the rule's `where` is an AND-ed
/// condition of the WHERE of the SELECT that names it, its columns bare or qualified by the
/// reference's alias (bare ones only when that SELECT reads one table); a condition
/// `col = 'v'` is met by `col = $n` too, when `$n` is bound to `v`. Returns those parameters,
/// or the first table read beyond its `where`.
pub(super) fn coverage(
    stmt: &Statement,
    rules: &RuleSet,
) -> Result<Vec<(usize, String)>, TableName> {
    if rules.rules().iter().all(|r| r.filter.is_none()) {
        return Ok(Vec::new());
    }
    let mut c = Coverage {
        rules,
        ctes: Vec::new(),
        found: None,
        params: Vec::new(),
    };
    let _ = stmt.visit(&mut c);
    match c.found {
        Some(t) => Err(t),
        None => Ok(c.params),
    }
}

struct Coverage<'r> {
    rules: &'r RuleSet,
    ctes: Vec<String>,
    found: Option<TableName>,
    params: Vec<(usize, String)>,
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
        let factors = factors(select);
        let alone = factors.len() == 1;
        for factor in &factors {
            let TableFactor::Table { name, alias, .. } = factor else {
                continue;
            };
            let Some(table) = resolve(name) else { continue };
            if name.0.len() == 1 && self.ctes.contains(&table.name) {
                continue;
            }
            let Some(filter) = self.rules.get(&table).and_then(|r| r.filter.clone()) else {
                continue;
            };
            let qualifier = match alias {
                Some(a) => fold(&a.name),
                None => table.name.clone(),
            };
            let have: Vec<String> = select
                .selection
                .iter()
                .flat_map(|w| conjuncts(w))
                .filter_map(|c| canonical(c, &qualifier, alone))
                .collect();
            match restriction(&filter, &have) {
                Some(params) => self.params.extend(params),
                None => {
                    self.found = Some(table);
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
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

/// The table references of a SELECT's FROM, joins and nested joins included.
fn factors(select: &Select) -> Vec<&TableFactor> {
    let mut factors = Vec::new();
    for t in &select.from {
        collect_factors(&t.relation, &mut factors);
        for j in &t.joins {
            collect_factors(&j.relation, &mut factors);
        }
    }
    factors
}

fn collect_factors<'a>(f: &'a TableFactor, out: &mut Vec<&'a TableFactor>) {
    match f {
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => {
            collect_factors(&table_with_joins.relation, out);
            for j in &table_with_joins.joins {
                collect_factors(&j.relation, out);
            }
        }
        other => out.push(other),
    }
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
fn canonical(e: &Expr, qualifier: &str, alone: bool) -> Option<String> {
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

    /// The coverage of `sql` under the DXY rule (`where symbol = 'DXY'`).
    fn covered(sql: &str) -> Result<Vec<(usize, String)>, TableName> {
        let stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        coverage(&stmt, &RuleSet::new(vec![dxy_rule()]))
    }

    #[test]
    fn a_read_within_the_where_is_covered() {
        let ok = covered("SELECT * FROM derived_data_bars WHERE symbol = 'DXY' AND ts > now()");
        assert_eq!(ok, Ok(vec![]));
        let ok = covered("SELECT b.ts FROM public.derived_data_bars b WHERE b.Symbol = 'DXY'");
        assert_eq!(ok, Ok(vec![]));
        let bound = covered("SELECT * FROM derived_data_bars b WHERE ts > $1 AND b.symbol = $2");
        assert_eq!(bound, Ok(vec![(2, "DXY".to_string())]));
        let shadowed =
            covered("WITH derived_data_bars AS (SELECT 1) SELECT * FROM derived_data_bars");
        assert_eq!(shadowed, Ok(vec![]));
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
}
