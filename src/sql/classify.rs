//! What one parsed statement does to the migrated tables: reads them, writes them (and how),
//! changes their definition, or none of these.
//!
//! The walk covers the whole statement tree, so a write inside a CTE, an `INSERT ... SELECT`
//! reading another migrated table, or a subquery in a `WHERE` are all seen. Functions outside a
//! known read-only list may write (`SELECT f()` can), so a read calling one is marked `may_write`
//! and the router keeps it on the primary.

use std::ops::ControlFlow;

use sqlparser::ast::{
    CopySource, Expr, FromTable, OnInsert, SetExpr, Statement, TableFactor, TableObject, Visit,
    Visitor,
};

use super::view::resolve;
use crate::rules::{RuleSet, TableName};

/// How a statement writes a migrated table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    Insert,
    /// `INSERT ... ON CONFLICT`.
    Upsert,
    InsertSelect,
    Update,
    Delete,
    Merge,
    CopyFrom,
    Truncate,
}

/// One write found in a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub table: TableName,
    pub op: WriteOp,
    /// Inside a CTE or another statement, rather than the statement itself.
    pub nested: bool,
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Found {
    pub reads: Vec<TableName>,
    /// Tables referenced that no rule migrates (CTE names excluded): a read can be served by the
    /// secondary only if each of them is a shared table there.
    pub others: Vec<TableName>,
    pub writes: Vec<Write>,
    pub may_write: bool,
    /// Names defined by `WITH`: a reference to one of them is not a table.
    pub ctes: Vec<String>,
}

struct Walk<'r> {
    rules: &'r RuleSet,
    depth: usize,
    found: Found,
    relations: Vec<TableName>,
}

/// Functions known not to write; anything else called by a statement might.
const READ_ONLY_FUNCTIONS: &[&str] = &[
    "abs",
    "array_to_string",
    "char_length",
    "json_typeof",
    "jsonb_typeof",
    "octet_length",
    "pg_typeof",
    "regexp_match",
    "regexp_replace",
    "string_to_array",
    "age",
    "array_agg",
    "array_length",
    "avg",
    "bool_and",
    "bool_or",
    "cardinality",
    "ceil",
    "ceiling",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "current_date",
    "current_timestamp",
    "date_part",
    "date_trunc",
    "dense_rank",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "generate_series",
    "greatest",
    "json_agg",
    "json_build_object",
    "jsonb_agg",
    "jsonb_build_object",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "log",
    "lower",
    "ltrim",
    "make_interval",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nullif",
    "ntile",
    "percentile_cont",
    "percentile_disc",
    "position",
    "power",
    "random",
    "rank",
    "replace",
    "right",
    "round",
    "row_number",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "stddev",
    "string_agg",
    "strpos",
    "substr",
    "substring",
    "sum",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_timestamp",
    "trim",
    "trunc",
    "unnest",
    "upper",
    "variance",
];

fn write_target(stmt: &Statement) -> Option<(Option<TableName>, WriteOp)> {
    let table_of = |f: &TableFactor| match f {
        TableFactor::Table { name, .. } => resolve(name),
        _ => None,
    };
    Some(match stmt {
        Statement::Insert(i) => {
            let name = match &i.table {
                TableObject::TableName(n) => resolve(n),
                _ => None,
            };
            let op = match (&i.on, i.source.as_deref().map(|q| q.body.as_ref())) {
                (Some(OnInsert::OnConflict(_)), _) => WriteOp::Upsert,
                (_, Some(SetExpr::Values(_))) | (_, None) => WriteOp::Insert,
                _ => WriteOp::InsertSelect,
            };
            (name, op)
        }
        Statement::Update(u) => (table_of(&u.table.relation), WriteOp::Update),
        Statement::Delete(d) => {
            let (FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t)) = &d.from;
            (
                t.first().and_then(|t| table_of(&t.relation)),
                WriteOp::Delete,
            )
        }
        Statement::Merge(m) => (table_of(&m.table), WriteOp::Merge),
        Statement::Copy {
            source: CopySource::Table { table_name, .. },
            to: false,
            ..
        } => (resolve(table_name), WriteOp::CopyFrom),
        _ => return None,
    })
}

impl Visitor for Walk<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        let nested = self.depth > 0;
        self.depth += 1;
        if let Statement::Truncate(t) = stmt {
            for target in &t.table_names {
                self.write(resolve(&target.name), WriteOp::Truncate, nested);
            }
        } else if let Some((table, op)) = write_target(stmt) {
            self.write(table, op, nested);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _: &Statement) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &sqlparser::ast::Query) -> ControlFlow<()> {
        // SELECT ... FOR UPDATE takes row locks: only the primary can.
        if !q.locks.is_empty() {
            self.found.may_write = true;
        }
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.found.ctes.push(cte.alias.name.value.to_lowercase());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &sqlparser::ast::ObjectName) -> ControlFlow<()> {
        if let Some(t) = resolve(name) {
            let bare = name.0.len() == 1;
            if bare && self.found.ctes.contains(&t.name) {
                return ControlFlow::Continue(());
            }
            if self.rules.get(&t).is_some() {
                self.relations.push(t);
            } else if !self.found.others.contains(&t) {
                self.found.others.push(t);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            let last = f.name.0.last().and_then(|p| p.as_ident());
            let name = last.map(|i| i.value.to_lowercase()).unwrap_or_default();
            if !READ_ONLY_FUNCTIONS.contains(&name.as_str()) {
                self.found.may_write = true;
            }
        }
        ControlFlow::Continue(())
    }
}

impl Walk<'_> {
    fn write(&mut self, table: Option<TableName>, op: WriteOp, nested: bool) {
        if let Some(table) = table.filter(|t| self.rules.get(t).is_some()) {
            self.found.writes.push(Write { table, op, nested });
        }
    }
}

/// Walks a statement and reports the migrated tables it reads and writes.
pub fn walk(stmt: &Statement, rules: &RuleSet) -> Found {
    let mut w = Walk {
        rules,
        depth: 0,
        found: Found::default(),
        relations: Vec::new(),
    };
    let _ = stmt.visit(&mut w);
    let mut found = w.found;
    for r in w.relations {
        if !found.reads.contains(&r) {
            found.reads.push(r);
        }
    }
    found
}

/// Statements that define or change objects: a migrated table among their names is DDL on it.
pub fn is_ddl(stmt: &Statement) -> bool {
    !matches!(
        stmt,
        Statement::Query(_)
            | Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Merge(_)
            | Statement::Copy { .. }
            | Statement::Truncate(_)
            | Statement::Explain { .. }
            | Statement::Prepare { .. }
            | Statement::Execute { .. }
            | Statement::Call(_)
            | Statement::Declare { .. }
            | Statement::Fetch { .. }
            | Statement::Set(_)
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
    )
}
