//! Capture on the secondary: a row trigger on the rule's target table that queues each change of
//! a row the rule owns in `pgbridge.reverse_changes`, inside the writing transaction, so a
//! queued change is exactly as durable as the write itself and vanishes with a rollback.
//!
//! The trigger's function runs as its owner (`SECURITY DEFINER`, with a fixed `search_path`),
//! so the application's users need no privilege on the queue. It skips the forward applier's
//! own writes (its sessions start with `pgbridge.origin=forward`, `mirror/apply/task.rs`): those
//! came from the primary and must not travel back.

use tokio_postgres::Client;

use crate::rules::{quote_ident, quote_literal, Rule};
use crate::sql::view::values_condition;

/// The queue and its schemas, created when missing.
pub const QUEUE_SQL: &str = "CREATE SCHEMA IF NOT EXISTS pgbridge; \
    CREATE SCHEMA IF NOT EXISTS pgbridge_w; \
    CREATE TABLE IF NOT EXISTS pgbridge.reverse_changes (seq bigserial PRIMARY KEY, \
    source text NOT NULL, xid xid8 NOT NULL DEFAULT pg_current_xact_id(), \
    at timestamptz NOT NULL DEFAULT clock_timestamp(), old jsonb, new jsonb)";

/// The session setting the forward applier's connections carry.
pub const ORIGIN_SETTING: &str = "pgbridge.origin";

/// Installs the queue, the rule's function and its trigger on the target (idempotent).
pub async fn enable(client: &Client, rule: &Rule) -> Result<(), tokio_postgres::Error> {
    let sql = format!(
        "{QUEUE_SQL}; {}; {}; {}",
        function_sql(rule),
        drop_trigger_sql(rule),
        create_trigger_sql(rule)
    );
    in_transaction(client, &sql).await
}

/// Creates the queue when missing (the applier, before it reads it the first time).
pub async fn ensure_queue(client: &Client) -> Result<(), tokio_postgres::Error> {
    in_transaction(client, QUEUE_SQL).await
}

/// Drops the rule's trigger; changes already queued stay queued for the applier.
pub async fn disable(client: &Client, rule: &Rule) -> Result<(), tokio_postgres::Error> {
    in_transaction(client, &drop_trigger_sql(rule)).await
}

async fn in_transaction(client: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let result = client
        .batch_execute(&crate::mirror::under_schema_lock(sql))
        .await;
    if result.is_err() {
        // The batch stopped at the failed statement, inside the transaction.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// The name of the rule's function and trigger: derived from the source table's name, within
/// PostgreSQL's 63 bytes (a long name is cut and keeps a hash of the whole).
pub fn object_name(rule: &Rule) -> String {
    let full = format!("reverse_{}.{}", rule.source.schema, rule.source.name);
    if full.len() <= 63 {
        return full;
    }
    let mut cut = 50;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{:012x}", &full[..cut], fnv(&full) & 0xffff_ffff_ffff)
}

/// FNV-1a: stable across builds, unlike std's hasher.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn function_name(rule: &Rule) -> String {
    format!("pgbridge_w.{}", quote_ident(&object_name(rule)))
}

/// `CREATE OR REPLACE FUNCTION`: the trigger body, quoted as one string literal (no dollar
/// quoting, which a rule's literal could end).
pub fn function_sql(rule: &Rule) -> String {
    let owned = |row: &str| match values_condition(rule, &format!("{row}.")) {
        Some(cond) => format!("({cond}) IS TRUE"),
        None => "true".to_string(),
    };
    let body = format!(
        "DECLARE o jsonb; n jsonb; BEGIN \
         IF current_setting({setting}, true) = 'forward' THEN RETURN NULL; END IF; \
         IF TG_OP <> 'INSERT' THEN IF {old_owned} THEN o := to_jsonb(OLD); END IF; END IF; \
         IF TG_OP <> 'DELETE' THEN IF {new_owned} THEN n := to_jsonb(NEW); END IF; END IF; \
         IF o IS NULL AND n IS NULL THEN RETURN NULL; END IF; \
         INSERT INTO pgbridge.reverse_changes (source, old, new) VALUES ({source}, o, n); \
         RETURN NULL; END",
        setting = quote_literal(ORIGIN_SETTING),
        old_owned = owned("OLD"),
        new_owned = owned("NEW"),
        source = quote_literal(&rule.source.to_string()),
    );
    format!(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER \
         SET search_path = pg_catalog, pg_temp AS {}",
        function_name(rule),
        quote_literal(&body)
    )
}

fn drop_trigger_sql(rule: &Rule) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {} ON {}",
        quote_ident(&object_name(rule)),
        rule.target.quoted()
    )
}

fn create_trigger_sql(rule: &Rule) -> String {
    format!(
        "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()",
        quote_ident(&object_name(rule)),
        rule.target.quoted(),
        function_name(rule)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::view::tests::dxy_rule;

    #[test]
    fn the_dxy_trigger_queues_only_the_rows_the_rule_owns() {
        let sql = function_sql(&dxy_rule());
        assert!(
            sql.starts_with(
                "CREATE OR REPLACE FUNCTION pgbridge_w.\"reverse_public.derived_data_bars\"() \
                 RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
            ),
            "{sql}"
        );
        assert!(
            sql.contains(
                "IF TG_OP <> ''INSERT'' THEN IF (OLD.timeframe = ''1m'' AND OLD.is_synthetic = true) \
                 IS TRUE THEN o := to_jsonb(OLD)"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("VALUES (''derived_data_bars'', o, n)"),
            "{sql}"
        );
        assert!(
            sql.contains("current_setting(''pgbridge.origin'', true)"),
            "{sql}"
        );
    }

    #[test]
    fn a_rule_without_values_queues_every_row() {
        let mut rule = dxy_rule();
        rule.values.clear();
        let sql = function_sql(&rule);
        assert!(
            sql.contains("IF TG_OP <> ''INSERT'' THEN IF true THEN o := to_jsonb(OLD)"),
            "{sql}"
        );
    }

    #[test]
    fn the_trigger_is_named_after_the_source_and_quoted() {
        let rule = dxy_rule();
        assert_eq!(
            create_trigger_sql(&rule),
            "CREATE TRIGGER \"reverse_public.derived_data_bars\" AFTER INSERT OR UPDATE OR DELETE \
             ON public.data_bars FOR EACH ROW EXECUTE FUNCTION \
             pgbridge_w.\"reverse_public.derived_data_bars\"()"
        );
        let mut long = dxy_rule();
        long.source.name = "x".repeat(80);
        let name = object_name(&long);
        assert_eq!(name.len(), 63, "{name}");
        long.source.name.push('y');
        assert_ne!(object_name(&long), name);
    }
}
