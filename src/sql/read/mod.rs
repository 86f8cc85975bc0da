//! The read rewrite: a query over source tables, rewritten to run on the secondary.
//!
//! Every reference to a source table (in FROM, JOIN, subqueries and CTE bodies) becomes an inline
//! view over the target that presents the source's exact columns and rows ([`super::view`]).
//! The reference keeps its name as the view's alias, so `b.close`, `derived_data_bars.close` and
//! unqualified columns resolve as before. A `WITH derived_data_bars AS (...)` shadows the table
//! and is left alone. Statements for the secondary may be re-rendered (docs/DESIGN.md,
//! principle 3).

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions_mut, BinaryOperator, Expr, Ident, ObjectName, Query, Select, SetExpr,
    Statement, TableAlias, TableFactor, Visit, VisitMut, Visitor, VisitorMut,
};

use super::view::{fold, resolve};
use super::SqlError;
use crate::rules::{RuleSet, TableName};

/// The inline view SQL of each source table whose rule has known columns, with the index that
/// names its placeholder.
pub type Views = HashMap<TableName, (usize, String)>;

/// Rendering a large view through the AST costs more than the rest of the rewrite; the view is
/// put in as a placeholder table name and its text substituted after rendering.
const PLACEHOLDER: &str = "pgbridge_view_";

struct Rewriter<'v> {
    views: &'v Views,
    ctes: Vec<String>,
    replaced: usize,
}

impl VisitorMut for Rewriter<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.push(cte.alias.name.value.to_lowercase());
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let Some(table) = resolve(name) else {
            return ControlFlow::Continue(());
        };
        if name.0.len() == 1 && self.ctes.contains(&table.name) {
            return ControlFlow::Continue(());
        }
        let Some((index, _)) = self.views.get(&table) else {
            return ControlFlow::Continue(());
        };
        let last = name.0.last().and_then(|p| p.as_ident()).cloned();
        if alias.is_none() {
            *alias = last.map(|name| TableAlias {
                explicit: true,
                name,
                columns: Vec::new(),
                at: None,
            });
        }
        *name = ObjectName::from(vec![Ident::new(format!("{PLACEHOLDER}{index}"))]);
        self.replaced += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        // `public.derived_data_bars.close`: the view is named by the table alone.
        if let Expr::CompoundIdentifier(parts) = e {
            if parts.len() == 3 {
                let name = TableName::new(&fold(&parts[0]), &fold(&parts[1]));
                if self.views.contains_key(&name) {
                    parts.remove(0);
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// Renders `stmt` with every source table reference replaced by its view; `None` when there was
/// none to replace.
pub fn render_with_views(stmt: &mut Statement, views: &Views) -> Option<String> {
    let mut r = Rewriter {
        views,
        ctes: Vec::new(),
        replaced: 0,
    };
    let _ = stmt.visit(&mut r);
    if r.replaced == 0 {
        return None;
    }
    let mut text = stmt.to_string();
    for (index, sql) in views.values() {
        let placeholder = format!("{PLACEHOLDER}{index} ");
        if text.contains(&placeholder) {
            text = text.replace(&placeholder, &format!("({sql}) "));
        }
    }
    Some(text)
}

/// The query rewritten for the secondary; `Err` says why it cannot be (a source table whose
/// columns are unknown, or a statement that is not a query).
pub fn rewrite(
    sql: &str,
    stmt: &Statement,
    views: &Views,
    reads: &[TableName],
    rules: &RuleSet,
) -> Result<(String, Vec<(usize, String)>), SqlError> {
    let Statement::Query(_) = stmt else {
        return Err(SqlError::NotAQuery);
    };
    if let Some(t) = reads.iter().find(|t| !views.contains_key(t)) {
        return Err(SqlError::ReadColumnsUnknown(t.clone()));
    }
    if sql.contains(PLACEHOLDER) {
        return Err(SqlError::ReservedName(PLACEHOLDER));
    }
    let params = coverage(stmt, rules).map_err(SqlError::BeyondWhere)?;
    let mut stmt = stmt.clone();
    render_with_views(&mut stmt, views)
        .map(|sql| (sql, params))
        .ok_or(SqlError::NothingToRewrite)
}

/// Whether the query reads every source table of a rule with a `where` only within that
/// `where` (the target has the migrated rows only, so another read cannot be answered there).
/// A reference is restricted when every AND-ed condition of the rule's `where` is an AND-ed
/// condition of the WHERE of the SELECT that names it, its columns bare or qualified by the
/// reference's alias (bare ones only when that SELECT reads one table); a condition
/// `col = 'v'` is met by `col = $n` too, when `$n` is bound to `v`. Returns those parameters,
/// or the first table read beyond its `where`.
fn coverage(stmt: &Statement, rules: &RuleSet) -> Result<Vec<(usize, String)>, TableName> {
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
