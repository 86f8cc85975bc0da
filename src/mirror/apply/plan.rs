//! The live plan of each mirrored table: its rule as loaded now and the statements built from it
//! (rebuilt when the rules are reloaded), and how a row image's values line up with them.

use std::sync::Arc;

use tracing::debug;

use super::{Applier, ApplyError};
use crate::mirror::{Row, Value};
use crate::rules::{quote_ident, MirrorMode, Rule, TableName};
use crate::sql::ApplyPlan;

/// Why a change cannot be mapped to the target (the transaction is refused for good).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum PlanError {
    #[error("the source's columns are unknown: rules were not checked online")]
    ColumnsUnknown,
    #[error("the row image has no column `{0}`")]
    NoColumn(String),
    #[error("the row image has no key column `{0}`")]
    NoKeyColumn(String),
    /// The rule's apply statements could not be built.
    #[error("{0}")]
    Statements(String),
}

/// A live rule and its plan.
pub(super) type LivePlan = (Arc<Rule>, Arc<RulePlan>);

/// A rule's apply statements, plus the filter check when the rule has a `where`.
#[derive(Debug)]
pub(super) struct RulePlan {
    pub plan: ApplyPlan,
    pub filter: Option<String>,
    /// [`Rule::membership_follows_key`]: an UPDATE's row must already be on the target.
    pub follows_key: bool,
}

/// Where a row change goes: the source table, its live rule and plan.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub table: &'a TableName,
    pub rule: &'a Rule,
    pub plan: &'a RulePlan,
}

impl Applier {
    /// [`Applier::plan`] for a change of the transaction being applied: a plan that cannot be
    /// built refuses the transaction; a table no rule mirrors any more is skipped (`None`).
    pub(super) fn live_plan(&mut self, table: &TableName) -> Result<Option<LivePlan>, ApplyError> {
        let plan = self.plan(table).map_err(|e| self.refused(table, None, e))?;
        if plan.is_none() {
            debug!(table = %table, "no mirrored rule for the table any more: change skipped");
        }
        Ok(plan)
    }

    /// The live rule of a source table and its plan (rebuilt when the rule was reloaded).
    /// `None` when no rule mirrors the table any more.
    pub(super) fn plan(&mut self, table: &TableName) -> Result<Option<LivePlan>, PlanError> {
        let rules = self.rules.load();
        let Some(rule) = rules.get(table) else {
            return Ok(None);
        };
        if rule.mirror == MirrorMode::Off {
            return Ok(None);
        }
        if let Some((r, p)) = self.plans.get(table) {
            if Arc::ptr_eq(r, rule) {
                return Ok(Some((r.clone(), p.clone())));
            }
        }
        let entry = (rule.clone(), Arc::new(RulePlan::for_rule(rule)?));
        self.plans.insert(table.clone(), entry.clone());
        Ok(Some(entry))
    }
}

impl RulePlan {
    fn for_rule(rule: &Rule) -> Result<RulePlan, PlanError> {
        Ok(RulePlan {
            plan: ApplyPlan::for_rule(rule).map_err(PlanError::Statements)?,
            filter: filter_sql(rule)?,
            follows_key: rule.membership_follows_key(),
        })
    }
}

/// `SELECT (where) FROM (SELECT $1::text::type AS col, ...)`: the rule's `where` on a row image.
fn filter_sql(rule: &Rule) -> Result<Option<String>, PlanError> {
    let Some(filter) = &rule.filter else {
        return Ok(None);
    };
    let cols = rule
        .source_columns
        .as_ref()
        .ok_or(PlanError::ColumnsUnknown)?;
    let items: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "${}::text::{} AS {}",
                i + 1,
                c.type_name,
                quote_ident(&c.name)
            )
        })
        .collect();
    Ok(Some(format!(
        "SELECT ({filter}) FROM (SELECT {}) AS pgbridge_v",
        items.join(", ")
    )))
}

/// The row's values in the source's column order (the upsert's `$1..$n`).
pub(super) fn row_values<'a>(rule: &Rule, row: &'a Row) -> Result<Vec<&'a Value>, PlanError> {
    let cols = rule
        .source_columns
        .as_ref()
        .ok_or(PlanError::ColumnsUnknown)?;
    cols.iter()
        .map(|c| {
            row.get(&c.name)
                .ok_or_else(|| PlanError::NoColumn(c.name.clone()))
        })
        .collect()
}

/// The key's values in rule key order (the delete's `$1..$k`).
pub(super) fn key_values<'a>(rule: &Rule, row: &'a Row) -> Result<Vec<&'a Value>, PlanError> {
    rule.key
        .iter()
        .map(|k| row.get(k).ok_or_else(|| PlanError::NoKeyColumn(k.clone())))
        .collect()
}

/// The key columns of a row image (rule key order), for records.
pub(super) fn key_row(rule: &Rule, row: &Row) -> Row {
    rule.key
        .iter()
        .filter_map(|k| row.get(k).map(|v| (k, v)))
        .fold(Row::new(), |r, (k, v)| r.with(k, v.clone()))
}

/// The key columns of rows as a VALUES list: `($n::text::type, ..., extra..., i)` per row, padded
/// with NULL rows to a power of two so that few prepared statements serve every batch.
pub(super) struct KeyValues<'a> {
    /// `c0, c1, ...`: the key columns' names in the list.
    pub columns: String,
    pub tuples: String,
    pub values: Vec<&'a Value>,
}

static NULL_TEXT: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| Value::null(tokio_postgres::types::Type::TEXT.oid()));

impl<'a> KeyValues<'a> {
    /// `rows` with their `extra` values (of types `extra_types`), numbered from `$first`.
    pub(super) fn build(
        rule: &Rule,
        rows: &[(&'a Row, &'a [Value])],
        extra_types: &[&str],
        first: usize,
    ) -> Option<KeyValues<'a>> {
        let cols = rule.source_columns.as_ref()?;
        let types: Vec<&str> = rule
            .key
            .iter()
            .map(|k| {
                cols.iter()
                    .find(|c| &c.name == k)
                    .map(|c| c.type_name.as_str())
            })
            .collect::<Option<_>>()?;
        let padded = rows.len().next_power_of_two().max(8);
        let mut values: Vec<&Value> =
            Vec::with_capacity(padded * (types.len() + extra_types.len()));
        let mut tuples = Vec::with_capacity(padded);
        for i in 0..padded {
            let at = first + values.len();
            let mut casts: Vec<String> = types
                .iter()
                .enumerate()
                .map(|(j, ty)| format!("${}::text::{ty}", at + j))
                .collect();
            casts.extend(
                extra_types
                    .iter()
                    .enumerate()
                    .map(|(j, ty)| format!("${}::{ty}", at + types.len() + j)),
            );
            match rows.get(i) {
                Some((row, extra)) => {
                    values.extend(key_values(rule, row).ok()?);
                    values.extend(extra.iter());
                }
                None => values.extend(std::iter::repeat_n(
                    &*NULL_TEXT,
                    types.len() + extra_types.len(),
                )),
            }
            tuples.push(format!("({}, {i})", casts.join(", ")));
        }
        let columns = (0..types.len())
            .map(|j| format!("c{j}"))
            .collect::<Vec<_>>()
            .join(", ");
        Some(KeyValues {
            columns,
            tuples: tuples.join(", "),
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::view::tests::dxy_rule;

    fn bar() -> Row {
        Row::new()
            .with("volume", Value::text(20, "7"))
            .with("symbol", Value::text(25, "DXY"))
            .with("ts", Value::text(1184, "2026-01-05 14:30:00+00"))
            .with("open", Value::text(1700, "1"))
            .with("high", Value::text(1700, "2"))
            .with("low", Value::text(1700, "0.5"))
            .with("close", Value::text(1700, "1.5"))
    }

    #[test]
    fn the_filter_is_asked_of_the_row_image_cast_to_the_source_types() {
        let sql = filter_sql(&dxy_rule()).unwrap().unwrap();
        assert_eq!(
            sql,
            "SELECT (symbol = 'DXY') FROM (SELECT $1::text::text AS symbol, \
             $2::text::timestamp with time zone AS ts, $3::text::numeric(18,6) AS open, \
             $4::text::numeric(18,6) AS high, $5::text::numeric(18,6) AS low, \
             $6::text::numeric(18,6) AS close, $7::text::bigint AS volume) AS pgbridge_v"
        );
        let mut rule = dxy_rule();
        rule.filter = None;
        assert_eq!(filter_sql(&rule), Ok(None));
    }

    #[test]
    fn values_line_up_with_the_source_columns_and_the_key() {
        let (rule, row) = (dxy_rule(), bar());
        let values: Vec<&Value> = row_values(&rule, &row).unwrap();
        assert_eq!(values[0], &Value::text(25, "DXY"));
        assert_eq!(values[6], &Value::text(20, "7"));
        let key = key_values(&rule, &row).unwrap();
        assert_eq!(
            key,
            vec![row.get("symbol").unwrap(), row.get("ts").unwrap()]
        );
        let key_row = key_row(&rule, &row);
        assert_eq!(key_row.columns, vec!["symbol", "ts"]);
    }

    #[test]
    fn a_row_image_without_a_column_cannot_be_mapped() {
        let rule = dxy_rule();
        let key = Row::new().with("symbol", Value::text(25, "DXY"));
        assert_eq!(
            row_values(&rule, &key).unwrap_err().to_string(),
            "the row image has no column `ts`"
        );
        assert_eq!(
            key_values(&rule, &Row::new()).unwrap_err().to_string(),
            "the row image has no key column `symbol`"
        );
        let mut unchecked = dxy_rule();
        unchecked.source_columns = None;
        assert_eq!(
            row_values(&unchecked, &bar()).unwrap_err(),
            PlanError::ColumnsUnknown
        );
    }
}
