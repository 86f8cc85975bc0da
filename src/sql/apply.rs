//! Apply statements: the SQL that writes a captured row to the target (docs/DESIGN.md,
//! principle 6).
//!
//! Each is parameterized; the applier binds the captured values (as text, in the order below), so
//! no value is ever spliced into SQL. Upserts and key-addressed deletes are idempotent: applying
//! a journal entry twice leaves the target as applying it once, so a retry is always safe, and
//! the backfill's `ON CONFLICT DO NOTHING` can run in any order with the mirror.

use super::view::{target_value, values_condition};
use super::SqlError;
use crate::rules::{quote_ident, Column, Rule};

/// The statements that mirror one rule's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyPlan {
    /// `INSERT ... ON CONFLICT (key) DO UPDATE ... RETURNING (xmax = 0)`; `$1..$n` are the
    /// source columns in table order (as [`super::Capture::columns`] returns them for INSERT and
    /// UPDATE). It returns `true` when it inserted the row, `false` when it updated one (a new
    /// row version carries no xmax; an updated one the upserting transaction's), and nothing
    /// when `DO NOTHING` found the row: the write comparison's "did the target have it".
    pub upsert: String,
    /// `DELETE` of one row; `$1..$k` are the key columns in rule key order.
    pub delete: String,
    /// What `TRUNCATE` of the source becomes: a delete of every row the rule owns.
    pub truncate: String,
}

impl ApplyPlan {
    /// Builds the plan; needs the rule checked online (its columns and conflict key).
    pub fn build(rule: &Rule) -> Result<ApplyPlan, SqlError> {
        let cols = rule
            .source_columns
            .as_ref()
            .ok_or(SqlError::SourceColumnsUnknown)?;
        Ok(ApplyPlan {
            upsert: upsert_sql(rule, cols),
            delete: delete_sql(rule, cols)?,
            truncate: truncate_sql(rule),
        })
    }

    /// [`ApplyPlan::build`] with the error as its message: the applier's plan error
    /// (src/mirror/apply/plan.rs) holds the text.
    pub fn for_rule(rule: &Rule) -> Result<ApplyPlan, String> {
        ApplyPlan::build(rule).map_err(|e| e.to_string())
    }
}

/// The upsert of one row image: every source column mapped to the target, the rule's `values`,
/// and on conflict every column but the conflict key updated.
fn upsert_sql(rule: &Rule, cols: &[Column]) -> String {
    let mut names = Vec::new();
    let mut values = Vec::new();
    for (i, c) in cols.iter().enumerate() {
        names.push(quote_ident(rule.target_column(&c.name)));
        values.push(target_value(
            rule,
            &c.name,
            &format!("${}::text::{}", i + 1, c.type_name),
        ));
    }
    for (c, v) in &rule.values {
        names.push(quote_ident(c));
        values.push(v.clone());
    }
    let conflict = rule
        .conflict_key
        .clone()
        .unwrap_or_else(|| rule.target_key());
    let action = conflict_action(&names, &conflict);
    let conflict: Vec<String> = conflict.iter().map(|k| quote_ident(k)).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO {action} RETURNING (xmax = 0)",
        rule.target.quoted(),
        names.join(", "),
        values.join(", "),
        conflict.join(", ")
    )
}

/// `UPDATE SET` of every column outside the conflict key; `NOTHING` when there is none.
fn conflict_action(names: &[String], conflict: &[String]) -> String {
    let updates: Vec<String> = names
        .iter()
        .filter(|n| !conflict.iter().any(|k| quote_ident(k) == **n))
        .map(|n| format!("{n} = EXCLUDED.{n}"))
        .collect();
    if updates.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    }
}

fn delete_sql(rule: &Rule, cols: &[Column]) -> Result<String, SqlError> {
    let mut conds = Vec::new();
    for (i, k) in rule.key.iter().enumerate() {
        let col = cols
            .iter()
            .find(|c| &c.name == k)
            .ok_or_else(|| SqlError::KeyNotASourceColumn(k.clone()))?;
        let value = target_value(rule, k, &format!("${}::text::{}", i + 1, col.type_name));
        conds.push(format!("{} = {value}", quote_ident(rule.target_column(k))));
    }
    conds.extend(values_condition(rule, ""));
    Ok(format!(
        "DELETE FROM {} WHERE {}",
        rule.target.quoted(),
        conds.join(" AND ")
    ))
}

/// A delete of every target row the rule owns (what TRUNCATE of the source means there).
pub(crate) fn truncate_sql(rule: &Rule) -> String {
    let mut conds: Vec<String> = values_condition(rule, "").into_iter().collect();
    if let (Some(filter), Some(cols)) = (&rule.filter, &rule.source_columns) {
        // The filter is over source columns: evaluate it on the row mapped back.
        let mapped: Vec<String> = cols
            .iter()
            .map(|c| {
                let v = super::view::source_value(rule, c, "pgbridge_t.");
                format!("{v} AS {}", quote_ident(&c.name))
            })
            .collect();
        conds.push(format!(
            "EXISTS (SELECT 1 FROM (SELECT {}) AS pgbridge_v WHERE ({filter}))",
            mapped.join(", ")
        ));
    }
    let mut sql = format!("DELETE FROM {} AS pgbridge_t", rule.target.quoted());
    if !conds.is_empty() {
        sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::view::tests::dxy_rule;

    #[test]
    fn the_dxy_plan() {
        let plan = ApplyPlan::for_rule(&dxy_rule()).unwrap();
        assert_eq!(
            plan.upsert,
            "INSERT INTO public.data_bars (symbol, ts, open, high, low, close_px, volume, timeframe, is_synthetic) \
             VALUES (CASE $1::text::text WHEN 'DXY' THEN 'DXY.IDX' ELSE $1::text::text END, $2::text::timestamp with time zone, \
             $3::text::numeric(18,6), $4::text::numeric(18,6), $5::text::numeric(18,6), $6::text::numeric(18,6), $7::text::bigint, '1m', true) \
             ON CONFLICT (symbol, timeframe, ts) DO UPDATE SET open = EXCLUDED.open, high = EXCLUDED.high, \
             low = EXCLUDED.low, close_px = EXCLUDED.close_px, volume = EXCLUDED.volume, \
             is_synthetic = EXCLUDED.is_synthetic RETURNING (xmax = 0)"
        );
        assert_eq!(
            plan.delete,
            "DELETE FROM public.data_bars WHERE symbol = CASE $1::text::text WHEN 'DXY' THEN 'DXY.IDX' ELSE $1::text::text END \
             AND ts = $2::text::timestamp with time zone AND timeframe = '1m' AND is_synthetic = true"
        );
    }
}
