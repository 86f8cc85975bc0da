//! Queued target rows in the source's terms, computed on the secondary by the same mapping the
//! reads use (`sql/view.rs`, `source_value`): a page of a batch is one query whose rows are the
//! changes in `seq` order, each with the new source row and the old row's key as jsonb text.

use std::sync::Arc;

use crate::rules::{quote_ident, quote_literal, Column, Rule};
use crate::sql::view::source_value;

/// One queued change as the primary needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceChange {
    pub seq: i64,
    /// The rule's source table name (`Rule::source`, displayed).
    pub source: String,
    /// Every source column of the row after the change, as jsonb text; `None` for a delete (or
    /// a row that left the rule).
    pub new_row: Option<String>,
    /// The key columns of the row before the change, as jsonb text; `None` for an insert (or a
    /// row that joined the rule).
    pub old_key: Option<String>,
    /// The old and the new key differ (compared on the secondary, so numbers keep every digit).
    pub key_moved: bool,
}

impl SourceChange {
    /// Whether the row under the old key must be deleted: it was deleted, or its key changed.
    pub fn deletes_old_key(&self) -> bool {
        self.old_key.is_some() && (self.new_row.is_none() || self.key_moved)
    }
}

/// The rules a page can carry: those whose source columns are known (checked online).
pub fn convertible(rules: &[Arc<Rule>]) -> Vec<Arc<Rule>> {
    rules
        .iter()
        .filter(|r| r.source_columns.is_some())
        .cloned()
        .collect()
}

/// The page query over `rules`: parameters `$1` the last applied seq of the batch (bigint),
/// `$2` the batch's snapshot and `$3` the previous batch's (`pg_snapshot` as text; `$3` NULL
/// before the first batch). Columns: `seq`, `source`, `new_row`, `old_key`, `key_moved`. `None`
/// without rules.
pub fn page_sql(rules: &[Arc<Rule>], page: i64) -> Option<String> {
    let branches: Vec<String> = rules.iter().filter_map(|r| branch(r)).collect();
    if branches.is_empty() {
        return None;
    }
    Some(format!(
        "SELECT seq, source, new_row, old_key, old_key IS DISTINCT FROM new_key AS key_moved \
         FROM ({}) AS p ORDER BY seq LIMIT {page}",
        branches.join(" UNION ALL ")
    ))
}

/// The changes of one rule's source within the batch.
fn branch(rule: &Rule) -> Option<String> {
    let columns = rule.source_columns.as_ref()?;
    let keys: Vec<Column> = rule
        .key
        .iter()
        .map(|k| columns.iter().find(|c| &c.name == k).cloned())
        .collect::<Option<_>>()?;
    Some(format!(
        "SELECT c.seq, c.source, {} AS new_row, {} AS old_key, {} AS new_key \
         FROM pgbridge.reverse_changes AS c \
         WHERE c.source = {} AND c.seq > $1 \
         AND pg_visible_in_snapshot(c.xid, $2::text::pg_snapshot) \
         AND ($3::text IS NULL OR NOT pg_visible_in_snapshot(c.xid, $3::text::pg_snapshot))",
        as_source(rule, columns, "c.new"),
        as_source(rule, &keys, "c.old"),
        as_source(rule, &keys, "c.new"),
        quote_literal(&rule.source.to_string())
    ))
}

/// `columns` of the target row image in `image` (a jsonb column), as jsonb text of source
/// values; NULL when the image is.
fn as_source(rule: &Rule, columns: &[Column], image: &str) -> String {
    let values: Vec<String> = columns
        .iter()
        .map(|c| {
            format!(
                "{} AS {}",
                source_value(rule, c, "n."),
                quote_ident(&c.name)
            )
        })
        .collect();
    format!(
        "(SELECT to_jsonb(s)::text FROM (SELECT {} FROM jsonb_populate_record(NULL::{}, {image}) \
         AS n) AS s WHERE {image} IS NOT NULL)",
        values.join(", "),
        rule.target.quoted()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::view::tests::dxy_rule;

    #[test]
    fn the_dxy_page_translates_back_and_keys_the_old_row() {
        let sql = page_sql(&[Arc::new(dxy_rule())], 100).unwrap();
        assert!(
            sql.starts_with(
                "SELECT seq, source, new_row, old_key, old_key IS DISTINCT FROM new_key \
                 AS key_moved FROM (SELECT c.seq"
            ),
            "{sql}"
        );
        assert!(sql.ends_with(") AS p ORDER BY seq LIMIT 100"), "{sql}");
        assert!(
            sql.contains(
                "(SELECT to_jsonb(s)::text FROM (SELECT CASE n.symbol WHEN 'DXY.IDX' THEN 'DXY' \
                 ELSE n.symbol END AS symbol, n.ts AS ts, n.open AS open, n.high AS high, \
                 n.low AS low, n.close_px AS close, n.volume AS volume \
                 FROM jsonb_populate_record(NULL::public.data_bars, c.new) AS n) AS s \
                 WHERE c.new IS NOT NULL) AS new_row"
            ),
            "{sql}"
        );
        assert!(
            sql.contains(
                "(SELECT to_jsonb(s)::text FROM (SELECT CASE n.symbol WHEN 'DXY.IDX' THEN 'DXY' \
                 ELSE n.symbol END AS symbol, n.ts AS ts FROM \
                 jsonb_populate_record(NULL::public.data_bars, c.old) AS n) AS s \
                 WHERE c.old IS NOT NULL) AS old_key"
            ),
            "{sql}"
        );
        assert!(sql.contains("WHERE c.source = 'derived_data_bars' AND c.seq > $1"));
    }

    #[test]
    fn a_rule_not_checked_online_has_no_page() {
        let mut rule = dxy_rule();
        rule.source_columns = None;
        assert!(convertible(&[Arc::new(rule)]).is_empty());
        assert_eq!(page_sql(&[], 10), None);
    }

    #[test]
    fn the_old_key_is_deleted_when_the_row_went_or_its_key_moved() {
        let change = |old: bool, new: bool, key_moved| SourceChange {
            seq: 1,
            source: "derived_data_bars".into(),
            new_row: new.then(|| "{}".to_string()),
            old_key: old.then(|| "{}".to_string()),
            key_moved,
        };
        assert!(!change(false, true, true).deletes_old_key());
        assert!(!change(true, true, false).deletes_old_key());
        assert!(change(true, true, true).deletes_old_key());
        assert!(change(true, false, true).deletes_old_key());
    }
}
