//! The capture rewrite: a write to a source table, made to return the rows it changed.
//!
//! The client's text is edited only by splicing (docs/DESIGN.md, principle 3): a RETURNING
//! clause is appended after the statement's last token, or the client's own RETURNING list is
//! extended.
//! The added columns come last, so the relay strips the trailing [`Capture::extra`] columns from
//! RowDescription and each DataRow (or drops the rows entirely when the client asked for none).
//!
//! The returned columns, in order: the row image (every source column; the key alone for
//! DELETE), then `where` evaluated on the row when the rule has one, then the old key for an
//! UPDATE that assigns a key column, and last the primary's transaction id
//! (`pg_current_xact_id()`, which the journal needs to resolve the transaction if pgbridge dies
//! before its outcome is known; carried by the rows, it costs no statement of its own).
//! PostgreSQL before 18 cannot return old values, so an UPDATE that changes its key reads the
//! old keys in a subquery locked `FOR UPDATE` and joined back by `ctid`.

use std::ops::Range;

use sqlparser::ast::{Expr, Ident, SelectItem, Statement, TableFactor, TableObject};

use super::classify::WriteOp;
use super::splice::{top_level_keyword, Edit, Tok};
use super::SqlError;
use crate::rules::{quote_ident, Rule, TableName};

/// How the captured columns come back from a rewritten write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub table: TableName,
    pub op: WriteOp,
    /// The client wrote RETURNING: its own columns come first and are kept. Without it the
    /// client expects no rows: drop RowDescription and DataRows, keep CommandComplete.
    pub client_returning: bool,
    /// The source columns of the row image, right after the client's own columns.
    pub columns: Vec<String>,
    /// Followed by one boolean: does the row match the rule's `where`? A row that does not is
    /// not the target's (INSERT, DELETE: nothing to apply; UPDATE: it may have left, delete it).
    pub in_filter: bool,
    /// Followed by the old values of the key columns (rule key order): delete the old target row.
    pub old_key: Vec<String>,
    /// How many trailing columns pgbridge added and the relay strips; the last is the
    /// transaction id.
    pub extra: usize,
}

/// The statement's table reference as RETURNING must name it (its alias, or its name).
fn table_ref(stmt: &Statement) -> Option<Vec<Ident>> {
    let from_factor = |f: &TableFactor| match f {
        TableFactor::Table { name, alias, .. } => Some(match alias {
            Some(a) => vec![a.name.clone()],
            None => name
                .0
                .iter()
                .filter_map(|p| p.as_ident().cloned())
                .collect(),
        }),
        _ => None,
    };
    match stmt {
        Statement::Insert(i) => match (&i.table_alias, &i.table) {
            (Some(a), _) => Some(vec![a.alias.clone()]),
            (None, TableObject::TableName(n)) => {
                Some(n.0.iter().filter_map(|p| p.as_ident().cloned()).collect())
            }
            _ => None,
        },
        Statement::Update(u) => from_factor(&u.table.relation),
        Statement::Delete(d) => {
            let (sqlparser::ast::FromTable::WithFromKeyword(t)
            | sqlparser::ast::FromTable::WithoutKeyword(t)) = &d.from;
            from_factor(&t.first()?.relation)
        }
        _ => None,
    }
}

fn qualified(prefix: &str, col: &str) -> String {
    format!("{prefix}.{}", quote_ident(col))
}

/// `where` with its columns qualified by the statement's table reference.
fn qualified_filter(rule: &Rule, r: &[Ident]) -> Result<String, SqlError> {
    let Some(filter) = &rule.filter else {
        return Ok(String::new());
    };
    let mut expr = crate::rules::check::parse_expression(filter).map_err(SqlError::Expression)?;
    let _ = sqlparser::ast::visit_expressions_mut(&mut expr, |e| {
        if let Expr::Identifier(i) = e {
            let mut parts = r.to_vec();
            parts.push(i.clone());
            *e = Expr::CompoundIdentifier(parts);
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    Ok(expr.to_string())
}

fn returning(stmt: &Statement) -> Option<&Vec<SelectItem>> {
    match stmt {
        Statement::Insert(i) => i.returning.as_ref(),
        Statement::Update(u) => u.returning.as_ref(),
        Statement::Delete(d) => d.returning.as_ref(),
        _ => None,
    }
}

/// Builds the capture of one statement: the edits to its text and the description.
pub fn capture(
    sql: &str,
    stmt: &Statement,
    op: WriteOp,
    rule: &Rule,
    toks: &[Tok],
    range: Range<usize>,
) -> Result<(Vec<Edit>, Capture), SqlError> {
    let columns = captured_columns(op, rule)?;
    let r = table_ref(stmt).ok_or(SqlError::UnnamedTable)?;
    let prefix = r
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(".");
    let mut items: Vec<String> = columns.iter().map(|c| qualified(&prefix, c)).collect();
    if rule.filter.is_some() {
        items.push(format!("({})", qualified_filter(rule, &r)?));
    }
    let mut edits = Vec::new();
    let mut old_key = Vec::new();
    if changes_key(stmt, rule) {
        edits.push(old_key_edit(sql, stmt, toks, range.clone(), &prefix, rule)?);
        old_key = rule.key.clone();
        items.extend((0..old_key.len()).map(|i| format!("pgbridge_old.pgbridge_k{i}")));
    }
    // Where the primary's WAL was when the row was written: a write of a row that another
    // transaction wrote waits for that one's commit, so its value is the larger, and the
    // appliers of several instances apply one row's images in the primary's order by it.
    items.push("pg_current_wal_insert_lsn()".to_string());
    items.push("pg_current_xact_id()".to_string());
    let client_returning = returning(stmt).is_some();
    edits.push(returning_edit(toks, range, client_returning, &items));
    let capture = Capture {
        table: rule.source.clone(),
        op,
        client_returning,
        columns,
        in_filter: rule.filter.is_some(),
        old_key,
        extra: items.len(),
    };
    Ok((edits, capture))
}

/// The source columns of the row image `op` captures: the key alone for DELETE, every column
/// otherwise.
fn captured_columns(op: WriteOp, rule: &Rule) -> Result<Vec<String>, SqlError> {
    match op {
        WriteOp::Delete => Ok(rule.key.clone()),
        WriteOp::Insert | WriteOp::Upsert | WriteOp::InsertSelect | WriteOp::Update => {
            let cols = rule
                .source_columns
                .as_ref()
                .ok_or(SqlError::SourceColumnsUnknown)?;
            Ok(cols.iter().map(|c| c.name.clone()).collect())
        }
        other => Err(SqlError::NotCapturable(other)),
    }
}

/// The RETURNING list `items` appended after the statement's last token, or after the client's
/// own RETURNING list.
fn returning_edit(
    toks: &[Tok],
    range: Range<usize>,
    client_returning: bool,
    items: &[String],
) -> Edit {
    let end = toks[range.end - 1].range.end;
    let lead = if client_returning {
        ", "
    } else {
        " RETURNING "
    };
    (end, 0, format!("{lead}{}", items.join(", ")))
}

/// Is `stmt` an UPDATE that assigns a key column (so the old key must be read)?
fn changes_key(stmt: &Statement, rule: &Rule) -> bool {
    match stmt {
        Statement::Update(u) => u.assignments.iter().any(|a| assigns_key(&a.target, rule)),
        _ => false,
    }
}

fn assigns_key(target: &sqlparser::ast::AssignmentTarget, rule: &Rule) -> bool {
    let sqlparser::ast::AssignmentTarget::ColumnName(name) = target else {
        return true;
    };
    let Some(last) = name.0.last().and_then(|p| p.as_ident()) else {
        return true;
    };
    let col = match last.quote_style {
        Some(_) => last.value.clone(),
        None => last.value.to_lowercase(),
    };
    rule.key.contains(&col)
}

/// Moves the UPDATE's WHERE into a `FOR UPDATE` subquery that also reads the old key, joined
/// back by ctid: one edit replacing `WHERE cond` (or inserted before RETURNING / the end).
fn old_key_edit(
    sql: &str,
    stmt: &Statement,
    toks: &[Tok],
    range: Range<usize>,
    prefix: &str,
    rule: &Rule,
) -> Result<Edit, SqlError> {
    let Statement::Update(u) = stmt else {
        return Err(SqlError::NotAnUpdate);
    };
    old_key_readable(u)?;
    let set = top_level_keyword(toks, range.clone(), "SET").ok_or(SqlError::NoSet)?;
    let table_text = &sql[toks[range.start + 1].range.start..toks[set - 1].range.end];
    let ret = top_level_keyword(toks, set..range.end, "RETURNING");
    let body_end = ret.unwrap_or(range.end);
    let where_at = top_level_keyword(toks, set..body_end, "WHERE");
    if where_at.is_some_and(|w| toks.get(w + 1).is_some_and(|t| t.is_keyword("CURRENT"))) {
        return Err(SqlError::KeyChangeWhereCurrentOf);
    }
    let (start, end, cond) = where_clause(sql, toks, where_at, body_end);
    let keys: Vec<String> = rule
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} AS pgbridge_k{i}", quote_ident(k)))
        .collect();
    Ok((
        start,
        end - start,
        // Replacing `WHERE ...` keeps the client's space before it.
        old_key_sql(prefix, &keys, table_text, cond)
            .trim_start_matches(if where_at.is_some() { " " } else { "" })
            .to_string(),
    ))
}

/// The UPDATEs whose old key a subquery joined back by ctid cannot read.
fn old_key_readable(u: &sqlparser::ast::Update) -> Result<(), SqlError> {
    if u.from.is_some() {
        return Err(SqlError::KeyChangeWithFrom);
    }
    let wildcard = u
        .returning
        .iter()
        .flatten()
        .any(|i| matches!(i, SelectItem::Wildcard(_)));
    if wildcard {
        return Err(SqlError::KeyChangeReturningAll);
    }
    Ok(())
}

/// The bytes the old-key edit replaces (`WHERE cond` up to `body_end`, or the empty place
/// before it when there is no WHERE) and the condition's text.
fn where_clause<'s>(
    sql: &'s str,
    toks: &[Tok],
    where_at: Option<usize>,
    body_end: usize,
) -> (usize, usize, Option<&'s str>) {
    match where_at {
        Some(w) => {
            let (a, b) = (toks[w].range.start, toks[body_end - 1].range.end);
            (a, b, Some(&sql[toks[w + 1].range.start..b]))
        }
        None => {
            let at = toks[body_end - 1].range.end;
            (at, at, None)
        }
    }
}

fn old_key_sql(prefix: &str, keys: &[String], table: &str, cond: Option<&str>) -> String {
    let cond = cond.map_or(String::new(), |c| format!(" WHERE {c}"));
    format!(
        " FROM (SELECT ctid AS pgbridge_ctid, {} FROM {table}{cond} FOR UPDATE) AS pgbridge_old \
         WHERE {prefix}.ctid = pgbridge_old.pgbridge_ctid",
        keys.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::splice::{self, tokens};
    use crate::sql::view::tests::dxy_rule;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    /// The client's text with the capture spliced in, or why it cannot be.
    fn captured(sql: &str, op: WriteOp) -> Result<(String, Capture), SqlError> {
        let stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        let toks = tokens(sql).unwrap();
        let range = 0..toks.len();
        let (mut edits, c) = capture(sql, &stmt, op, &dxy_rule(), &toks, range)?;
        Ok((splice::apply(sql, &mut edits), c))
    }

    #[test]
    fn a_delete_returns_its_key_and_the_transaction() {
        let (sql, c) = captured(
            "DELETE FROM derived_data_bars /* c */ WHERE ts < now()",
            WriteOp::Delete,
        )
        .unwrap();
        assert_eq!(
            sql,
            "DELETE FROM derived_data_bars /* c */ WHERE ts < now() RETURNING \
             derived_data_bars.symbol, derived_data_bars.ts, (derived_data_bars.symbol = 'DXY'), \
             pg_current_wal_insert_lsn(), pg_current_xact_id()"
        );
        assert_eq!(
            (c.columns.len(), c.extra, c.client_returning),
            (2, 5, false)
        );
    }

    #[test]
    fn a_key_change_reads_the_old_key_locked() {
        let (sql, c) = captured(
            "UPDATE derived_data_bars b SET ts = ts + interval '1 day' WHERE b.close > 1 RETURNING b.close",
            WriteOp::Update,
        )
        .unwrap();
        assert!(
            sql.starts_with(
                "UPDATE derived_data_bars b SET ts = ts + interval '1 day' FROM (SELECT ctid AS \
                 pgbridge_ctid, symbol AS pgbridge_k0, ts AS pgbridge_k1 FROM derived_data_bars b \
                 WHERE b.close > 1 FOR UPDATE) AS pgbridge_old WHERE b.ctid = \
                 pgbridge_old.pgbridge_ctid RETURNING b.close, b.symbol,"
            ),
            "{sql}"
        );
        assert!(sql.ends_with(
            ", pgbridge_old.pgbridge_k0, pgbridge_old.pgbridge_k1, pg_current_wal_insert_lsn(), \
             pg_current_xact_id()"
        ));
        assert_eq!(c.old_key, ["symbol", "ts"]);
        assert!(c.client_returning);
    }

    #[test]
    fn what_cannot_be_captured_says_why() {
        let err = |sql: &str, op| captured(sql, op).unwrap_err().to_string();
        assert_eq!(
            err(
                "UPDATE derived_data_bars SET ts = now() RETURNING *",
                WriteOp::Update
            ),
            "RETURNING * with a key change cannot capture the old key"
        );
        assert_eq!(
            err(
                "UPDATE derived_data_bars SET symbol = 'x' FROM t WHERE t.a = 1",
                WriteOp::Update
            ),
            "an UPDATE ... FROM that changes key columns cannot capture the old key"
        );
        assert_eq!(
            err("TRUNCATE derived_data_bars", WriteOp::Truncate),
            "Truncate cannot be captured row by row"
        );
    }
}
