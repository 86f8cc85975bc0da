//! The read rewrite: a query over source tables, rewritten to run on the secondary.
//!
//! Every reference to a source table (in FROM, JOIN, subqueries and CTE bodies) becomes an inline
//! view over the target that presents the source's exact columns and rows ([`super::view`]).
//! The reference keeps its name as the view's alias, so `b.close`, `derived_data_bars.close` and
//! unqualified columns resolve as before. A `WITH derived_data_bars AS (...)` shadows the table
//! and is left alone. Statements for the secondary may be re-rendered (docs/DESIGN.md,
//! principle 3). A read of a table whose rule has a `where` must ask for the rule's rows only
//! ([`coverage`]): its conditions must imply the `where` ([`prove`], over [`formula`]s of
//! conditions whose literals are read as [`value`]s of the column's type).

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Ident, ObjectName, Query, Statement, TableAlias, TableFactor, VisitMut, VisitorMut,
};

use super::view::{fold, resolve};
use super::SqlError;

mod coverage;
mod formula;
pub mod prove;
pub mod value;
use crate::rules::{RuleSet, TableName};
use coverage::coverage;
pub use coverage::Covered;
pub use prove::{Bound, Deferred};

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
) -> Result<(String, Covered), SqlError> {
    let Statement::Query(_) = stmt else {
        return Err(SqlError::NotAQuery);
    };
    if let Some(t) = reads.iter().find(|t| !views.contains_key(t)) {
        return Err(SqlError::ReadColumnsUnknown(t.clone()));
    }
    if sql.contains(PLACEHOLDER) {
        return Err(SqlError::ReservedName(PLACEHOLDER));
    }
    let covered = coverage(stmt, rules).map_err(SqlError::BeyondWhere)?;
    let mut stmt = stmt.clone();
    render_with_views(&mut stmt, views)
        .map(|sql| (sql, covered))
        .ok_or(SqlError::NothingToRewrite)
}
