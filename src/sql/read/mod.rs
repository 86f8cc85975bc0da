//! The read rewrite: a query over source tables, rewritten to run on the secondary.
//!
//! Every reference to a source table (in FROM, JOIN, subqueries and CTE bodies) becomes an inline
//! view over the target that presents the source's exact columns and rows ([`super::view`];
//! the references are found and renamed by [`Retarget`], which keeps each one's name as its
//! alias and leaves a CTE of the same name alone). Statements for the secondary may be
//! re-rendered (docs/DESIGN.md, principle 3). A read of a table whose rule has a `where` must ask for the rule's rows only
//! ([`coverage`]): its conditions must imply the `where` ([`prove`], over [`formula`]s of
//! conditions whose literals are read as [`value`]s of the column's type).

use std::collections::HashMap;

use sqlparser::ast::{Ident, ObjectName, Statement, VisitMut};

use super::view::Retarget;
use super::SqlError;

pub mod bind;
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

/// Renders `stmt` with every source table reference replaced by its view; `None` when there was
/// none to replace.
pub fn render_with_views(stmt: &mut Statement, views: &Views) -> Option<String> {
    let mut r = Retarget::new(|table: &TableName| {
        let (index, _) = views.get(table)?;
        Some(ObjectName::from(vec![Ident::new(format!(
            "{PLACEHOLDER}{index}"
        ))]))
    });
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
