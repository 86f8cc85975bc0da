//! The statement rewrite for `mirror = "statements"`: the client's write itself, rewritten to the
//! target (table, columns, translated values, `values` constants, and the rule's `where`).
//!
//! Replaying a statement is only exact when it is deterministic. Expressions that are not
//! (`now()`, `random()`, `nextval()`, `gen_random_uuid()`, source columns left to their defaults)
//! are recorded as warnings; `mirror = "rows"` is the exact mode.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AssignmentTarget, Delete, Expr, FromTable, ObjectName, OnConflictAction, OnInsert, Statement,
    TableFactor, Update,
};

use super::view::{source_value, target_value, values_condition};
use super::SqlError;
use crate::rules::check::parse_expression as check_expr;
use crate::rules::{quote_ident, Column, Rule};

/// A write rewritten for the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRewrite {
    pub sql: String,
    /// Why replaying it may not reproduce the primary's rows.
    pub warnings: Vec<String>,
}

const NON_DETERMINISTIC: &[&str] = &[
    "now",
    "current_timestamp",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "localtimestamp",
    "localtime",
    "current_time",
    "current_date",
    "timeofday",
    "random",
    "nextval",
    "currval",
    "setval",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v4",
    "txid_current",
    "pg_current_xact_id",
];

fn warnings(stmt: &Statement) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let _ = sqlparser::ast::visit_expressions(stmt, |e| {
        if let Expr::Function(f) = e {
            let name = f.name.to_string().to_lowercase();
            let last = name.rsplit('.').next().unwrap_or("").to_string();
            if NON_DETERMINISTIC.contains(&last.as_str()) {
                let w = format!("{last}() is evaluated again on the secondary and may differ");
                if !out.contains(&w) {
                    out.push(w);
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

/// Replaces references to source columns (bare, or qualified by one of `refs`) with their value
/// computed from the target row `pgbridge_t`.
fn map_columns(expr: &mut Expr, rule: &Rule, cols: &[Column], refs: &[String]) {
    let _ = sqlparser::ast::visit_expressions_mut(expr, |e| {
        let col = match e {
            Expr::Identifier(i) => Some(i.value.to_lowercase()),
            Expr::CompoundIdentifier(p) if p.len() >= 2 => {
                let r = p[p.len() - 2].value.to_lowercase();
                refs.contains(&r)
                    .then(|| p[p.len() - 1].value.to_lowercase())
            }
            _ => None,
        };
        if let Some(c) = col.and_then(|c| cols.iter().find(|x| x.name == c)) {
            if let Ok(mapped) = check_expr(&source_value(rule, c, "pgbridge_t.")) {
                *e = Expr::Nested(Box::new(mapped));
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The conditions every rewritten UPDATE and DELETE carries: the rule's rows only.
fn owned_rows(
    rule: &Rule,
    cols: &[Column],
    client: Option<&Expr>,
    refs: &[String],
) -> Result<String, SqlError> {
    let mut conds: Vec<String> = values_condition(rule, "pgbridge_t.").into_iter().collect();
    for text in client
        .map(|e| e.to_string())
        .into_iter()
        .chain(rule.filter.clone())
    {
        let mut e = check_expr(&text).map_err(SqlError::Expression)?;
        map_columns(&mut e, rule, cols, refs);
        conds.push(format!("({e})"));
    }
    Ok(if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    })
}

/// Rewrites a write to `rule.source` into the same write on `rule.target`.
pub fn rewrite(stmt: &Statement, rule: &Rule) -> Result<StatementRewrite, SqlError> {
    let cols = rule
        .source_columns
        .as_deref()
        .ok_or(SqlError::SourceColumnsUnknown)?;
    let mut warnings = warnings(stmt);
    let sql = match stmt {
        Statement::Update(u) => update(u, rule, cols)?,
        Statement::Delete(d) => delete(d, rule, cols)?,
        Statement::Insert(i) => insert(i, rule, cols, &mut warnings)?,
        Statement::Truncate(_) => super::apply::truncate_sql(rule),
        _ => return Err(SqlError::NotReplayable),
    };
    Ok(StatementRewrite { sql, warnings })
}

/// A column name as PostgreSQL folds it: the last part of a possibly qualified name.
fn column_of(name: &ObjectName) -> String {
    match name.0.last().and_then(|p| p.as_ident()) {
        Some(i) if i.quote_style.is_some() => i.value.clone(),
        Some(i) => i.value.to_lowercase(),
        None => String::new(),
    }
}

/// The names that refer to the source in the statement: its own name and its alias.
fn references(rule: &Rule, factor: Option<&TableFactor>) -> Vec<String> {
    let mut refs = vec![rule.source.name.clone()];
    if let Some(TableFactor::Table { alias: Some(a), .. }) = factor {
        refs.push(a.name.value.to_lowercase());
    }
    refs
}

fn update(u: &Update, rule: &Rule, cols: &[Column]) -> Result<String, SqlError> {
    if u.from.is_some() {
        return Err(SqlError::UnreplayableForm("UPDATE ... FROM"));
    }
    let refs = references(rule, Some(&u.table.relation));
    let mut sets = Vec::new();
    for a in &u.assignments {
        let AssignmentTarget::ColumnName(name) = &a.target else {
            return Err(SqlError::UnreplayableForm("a tuple assignment"));
        };
        let col = column_of(name);
        let mut value = a.value.clone();
        map_columns(&mut value, rule, cols, &refs);
        let value = target_value(rule, &col, &format!("({value})"));
        sets.push(format!(
            "{} = {value}",
            quote_ident(rule.target_column(&col))
        ));
    }
    let filter = owned_rows(rule, cols, u.selection.as_ref(), &refs)?;
    Ok(format!(
        "UPDATE {} AS pgbridge_t SET {}{filter}",
        rule.target.quoted(),
        sets.join(", ")
    ))
}

fn delete(d: &Delete, rule: &Rule, cols: &[Column]) -> Result<String, SqlError> {
    if d.using.is_some() {
        return Err(SqlError::UnreplayableForm("DELETE ... USING"));
    }
    let (FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t)) = &d.from;
    let refs = references(rule, t.first().map(|t| &t.relation));
    Ok(format!(
        "DELETE FROM {} AS pgbridge_t{}",
        rule.target.quoted(),
        owned_rows(rule, cols, d.selection.as_ref(), &refs)?
    ))
}

fn insert(
    i: &sqlparser::ast::Insert,
    rule: &Rule,
    cols: &[Column],
    warnings: &mut Vec<String>,
) -> Result<String, SqlError> {
    let source = i.source.as_ref().ok_or(SqlError::InsertWithoutQuery)?;
    let listed: Vec<String> = if i.columns.is_empty() {
        cols.iter().map(|c| c.name.clone()).collect()
    } else {
        i.columns.iter().map(column_of).collect()
    };
    let (names, values) = inserted(rule, cols, &listed)?;
    for c in cols
        .iter()
        .filter(|c| c.has_default && !listed.contains(&c.name))
    {
        warnings.push(format!(
            "column {} takes its default on each side and may differ",
            c.name
        ));
    }
    let aliases: Vec<String> = listed.iter().map(|n| quote_ident(n)).collect();
    let mut sql = format!(
        "INSERT INTO {} ({}) SELECT {} FROM ({source}) AS pgbridge_s ({})",
        rule.target.quoted(),
        names.join(", "),
        values.join(", "),
        aliases.join(", ")
    );
    if let Some(filter) = &rule.filter {
        sql.push_str(&format!(" WHERE ({filter})"));
    }
    sql.push_str(on_conflict(i.on.as_ref())?);
    Ok(sql)
}

/// The target columns an INSERT of the `listed` source columns writes, and their values from
/// the inserted rows (`pgbridge_s`); the rule's `values` last.
fn inserted(
    rule: &Rule,
    cols: &[Column],
    listed: &[String],
) -> Result<(Vec<String>, Vec<String>), SqlError> {
    let mut names = Vec::new();
    let mut values = Vec::new();
    for name in listed {
        let c = cols
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| SqlError::NotASourceColumn(name.clone()))?;
        names.push(quote_ident(rule.target_column(name)));
        let v = format!("pgbridge_s.{}::{}", quote_ident(name), c.type_name);
        values.push(target_value(rule, name, &v));
    }
    for (c, v) in &rule.values {
        names.push(quote_ident(c));
        values.push(v.clone());
    }
    Ok((names, values))
}

/// The replay's ON CONFLICT: DO NOTHING carries over, DO UPDATE does not.
fn on_conflict(on: Option<&OnInsert>) -> Result<&'static str, SqlError> {
    match on {
        None => Ok(""),
        Some(OnInsert::OnConflict(c)) if matches!(c.action, OnConflictAction::DoNothing) => {
            Ok(" ON CONFLICT DO NOTHING")
        }
        Some(_) => Err(SqlError::UnreplayableForm(
            "INSERT ... ON CONFLICT DO UPDATE",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::view::tests::dxy_rule;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn rewritten(sql: &str) -> Result<StatementRewrite, SqlError> {
        let stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        rewrite(&stmt, &dxy_rule())
    }

    #[test]
    fn an_insert_goes_to_the_target_columns_within_the_where() {
        let r = rewritten(
            "INSERT INTO derived_data_bars (symbol, ts, close) VALUES ('DXY', now(), 1.5) \
             ON CONFLICT DO NOTHING",
        )
        .unwrap();
        assert_eq!(
            r.sql,
            "INSERT INTO public.data_bars (symbol, ts, close_px, timeframe, is_synthetic) SELECT \
             CASE pgbridge_s.symbol::text WHEN 'DXY' THEN 'DXY.IDX' ELSE pgbridge_s.symbol::text END, \
             pgbridge_s.ts::timestamp with time zone, pgbridge_s.close::numeric(18,6), '1m', true \
             FROM (VALUES ('DXY', now(), 1.5)) AS pgbridge_s (symbol, ts, close) \
             WHERE (symbol = 'DXY') ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            r.warnings,
            ["now() is evaluated again on the secondary and may differ"]
        );
    }

    #[test]
    fn what_cannot_be_replayed_says_why() {
        let err = |sql: &str| rewritten(sql).unwrap_err().to_string();
        assert_eq!(
            err("INSERT INTO derived_data_bars (symbol) VALUES ('x') ON CONFLICT (symbol) DO UPDATE SET ts = now()"),
            "INSERT ... ON CONFLICT DO UPDATE cannot be rewritten; use mirror = \"rows\""
        );
        assert_eq!(
            err("INSERT INTO derived_data_bars (nope) VALUES (1)"),
            "`nope` is not a source column"
        );
        assert_eq!(
            err("DELETE FROM derived_data_bars USING t WHERE t.a = 1"),
            "DELETE ... USING cannot be rewritten; use mirror = \"rows\""
        );
        assert_eq!(
            err("SELECT 1"),
            "only INSERT, UPDATE, DELETE and TRUNCATE can be rewritten; use mirror = \"rows\""
        );
    }
}
