//! The primary's side: one page of changes applied to the source tables in one transaction,
//! together with the position that says so (`pgbridge.reverse_applied`, one row), so after a
//! crash the applier resumes exactly after the last page the primary committed.

use std::collections::HashMap;

use futures_util::future::try_join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Statement};

use super::convert::SourceChange;
use super::Position;
use crate::rules::{quote_ident, Rule};

pub const POSITION_SCHEMA_SQL: &str = "CREATE SCHEMA IF NOT EXISTS pgbridge; \
    CREATE TABLE IF NOT EXISTS pgbridge.reverse_applied (id boolean PRIMARY KEY DEFAULT true \
    CHECK (id), prev_snapshot text, cur_snapshot text, last_seq bigint NOT NULL, \
    applied_at timestamptz NOT NULL DEFAULT now()); \
    INSERT INTO pgbridge.reverse_applied (id, last_seq) VALUES (true, 0) ON CONFLICT DO NOTHING";
pub const READ_POSITION_SQL: &str =
    "SELECT prev_snapshot, cur_snapshot, last_seq FROM pgbridge.reverse_applied";
/// The position, locked: a page waits for any other session's page (an applier killed with
/// its COMMIT in flight, or a second applier) to end, then sees what it committed.
const LOCK_POSITION_SQL: &str =
    "SELECT prev_snapshot, cur_snapshot, last_seq FROM pgbridge.reverse_applied FOR UPDATE";
const WRITE_POSITION_SQL: &str = "UPDATE pgbridge.reverse_applied SET prev_snapshot = $1, \
    cur_snapshot = $2, last_seq = $3, applied_at = now()";

/// The position in a row of [`READ_POSITION_SQL`].
pub fn position(row: &tokio_postgres::Row) -> Position {
    Position {
        prev: row.get(0),
        cur: row.get(1),
        last_seq: row.get(2),
    }
}

/// Prepared statements of one connection, by text.
#[derive(Default)]
pub struct Statements(HashMap<String, Statement>);

impl Statements {
    pub async fn get(
        &mut self,
        client: &impl GenericClient,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        let s = client.prepare(sql).await?;
        self.0.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

/// The upsert of a new source row given as jsonb text (`$1`): every other column updated on a
/// key conflict, nothing for a key-only table.
pub fn upsert_sql(rule: &Rule) -> Option<String> {
    let columns: Vec<String> = rule
        .source_columns
        .as_ref()?
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let keys: Vec<String> = rule.key.iter().map(|k| quote_ident(k)).collect();
    let sets: Vec<String> = columns
        .iter()
        .filter(|c| !keys.contains(c))
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let action = if sets.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", sets.join(", "))
    };
    let table = rule.source.quoted();
    let list = columns.join(", ");
    Some(format!(
        "INSERT INTO {table} ({list}) SELECT {list} FROM jsonb_populate_record(NULL::{table}, \
         $1::text::jsonb) ON CONFLICT ({}) DO {action}",
        keys.join(", ")
    ))
}

/// The delete of the source row with the key given as jsonb text (`$1`).
pub fn delete_sql(rule: &Rule) -> String {
    let table = rule.source.quoted();
    let conds: Vec<String> = rule
        .key
        .iter()
        .map(|k| format!("s.{0} = k.{0}", quote_ident(k)))
        .collect();
    format!(
        "DELETE FROM {table} AS s USING jsonb_populate_record(NULL::{table}, $1::text::jsonb) \
         AS k WHERE {}",
        conds.join(" AND ")
    )
}

/// Applies `page` (in seq order) and records `pos` in one transaction on the primary, when the
/// primary's position is still `expected` (else nothing, and false); the statements are
/// pipelined, in order.
pub async fn apply_page(
    client: &mut Client,
    statements: &mut Statements,
    rules: &HashMap<String, &Rule>,
    page: &[SourceChange],
    expected: &Position,
    pos: &Position,
) -> Result<bool, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let lock = statements.get(&tx, LOCK_POSITION_SQL).await?;
    if tx
        .query_opt(&lock, &[])
        .await?
        .map(|r| position(&r))
        .as_ref()
        != Some(expected)
    {
        return Ok(false);
    }
    let mut queued: Vec<(Statement, &String)> = Vec::with_capacity(page.len() * 2);
    for change in page {
        // The page query only returns changes of these rules' sources.
        let Some(rule) = rules.get(&change.source) else {
            continue;
        };
        if let (true, Some(key)) = (change.deletes_old_key(), &change.old_key) {
            queued.push((statements.get(&tx, &delete_sql(rule)).await?, key));
        }
        if let (Some(row), Some(sql)) = (&change.new_row, upsert_sql(rule)) {
            queued.push((statements.get(&tx, &sql).await?, row));
        }
    }
    let params: Vec<[&(dyn ToSql + Sync); 1]> = queued.iter().map(|(_, v)| [*v as _]).collect();
    let writes = queued
        .iter()
        .zip(&params)
        .map(|((s, _), p)| tx.execute(s, p));
    try_join_all(writes).await?;
    let write = statements.get(&tx, WRITE_POSITION_SQL).await?;
    tx.execute(&write, &[&pos.prev, &pos.cur, &pos.last_seq])
        .await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::view::tests::dxy_rule;

    #[test]
    fn the_dxy_upsert_updates_every_column_but_the_key() {
        assert_eq!(
            upsert_sql(&dxy_rule()).unwrap(),
            "INSERT INTO public.derived_data_bars (symbol, ts, open, high, low, close, volume) \
             SELECT symbol, ts, open, high, low, close, volume FROM \
             jsonb_populate_record(NULL::public.derived_data_bars, $1::text::jsonb) \
             ON CONFLICT (symbol, ts) DO UPDATE SET open = EXCLUDED.open, high = EXCLUDED.high, \
             low = EXCLUDED.low, close = EXCLUDED.close, volume = EXCLUDED.volume"
        );
    }

    #[test]
    fn a_key_only_table_does_nothing_on_conflict() {
        let mut rule = dxy_rule();
        rule.source_columns.as_mut().unwrap().truncate(2);
        assert!(upsert_sql(&rule)
            .unwrap()
            .ends_with("ON CONFLICT (symbol, ts) DO NOTHING"));
        rule.source_columns = None;
        assert_eq!(upsert_sql(&rule), None);
    }

    #[test]
    fn the_delete_matches_the_whole_key() {
        assert_eq!(
            delete_sql(&dxy_rule()),
            "DELETE FROM public.derived_data_bars AS s USING \
             jsonb_populate_record(NULL::public.derived_data_bars, $1::text::jsonb) AS k \
             WHERE s.symbol = k.symbol AND s.ts = k.ts"
        );
    }
}
