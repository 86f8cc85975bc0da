//! The write views on the target's database, and what the gate asks the databases.
//!
//! The write view of a rule is created (or replaced) when its table's writes switch to the
//! secondary, and again when pgbridge starts with the table switched; the sibling views of
//! upserts ([`crate::sql::write_view::mode_view_name`]) are created the first time a session
//! needs one (the statement waits for it, once per process and mode), through one shared
//! connection of pgbridge's own.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio_postgres::Client;
use tracing::debug;

use crate::config::PgUrl;
use crate::rules::{quote_literal, Rule};
use crate::sql::write_view;

/// Why the databases could not do what the switch asked.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{}", crate::net::error_text(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("the rule for {0} was not checked against the databases: its columns are unknown")]
    Unchecked(String),
}

/// pgbridge's own connection to a database.
pub async fn connect(url: &PgUrl) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = url.connect().await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "write switch connection ended");
        }
    });
    Ok(client)
}

/// Creates or replaces the write view of `rule` and the sibling views of the common upserts
/// (DO NOTHING, and DO UPDATE of every non-key column), under an advisory lock.
pub async fn install(client: &Client, rule: &Rule) -> Result<(), InstallError> {
    let defaults = target_defaults(client, rule).await?;
    let (rest, grants) = source_here(client, rule).await?;
    let unchecked = || InstallError::Unchecked(rule.source.to_string());
    let mut script = write_view::install_script(rule, &defaults, rest).ok_or_else(unchecked)?;
    script.push_str(&grant_script(&write_view::view_name(rule), &grants));
    for mode in common_modes(rule) {
        script.push_str(&write_view::mode_view_script(rule, &mode, rest).ok_or_else(unchecked)?);
        let view = write_view::mode_view_name(rule, &mode);
        script.push_str(&grant_script(&view, &grants));
    }
    client
        .batch_execute(&crate::mirror::under_schema_lock(&script))
        .await?;
    Ok(())
}

fn common_modes(rule: &Rule) -> Vec<String> {
    let mut cols: Vec<String> = rule
        .source_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .filter(|c| !rule.key.contains(c))
        .collect();
    cols.sort();
    vec!["nothing".into(), format!("update:{}", cols.join(","))]
}

/// Whether the source table is in the database `client` is connected to (the target's): its
/// rows outside the rule's `where` then stay there, part of the write view, and the views take
/// its grants ([`source_grants`]; none otherwise).
async fn source_here(
    client: &Client,
    rule: &Rule,
) -> Result<(bool, Vec<(String, String)>), InstallError> {
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&rule.source.quoted()],
        )
        .await?;
    match row.get(0) {
        true => Ok((true, source_grants(client, rule).await?)),
        false => Ok((false, Vec::new())),
    }
}

/// Who may do what on the legacy table (its owner everything): `(role, privilege)`, the role
/// quoted or `PUBLIC`.
async fn source_grants(
    client: &Client,
    rule: &Rule,
) -> Result<Vec<(String, String)>, InstallError> {
    let rows = client
        .query(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END, \
                    a.privilege_type \
             FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a \
             WHERE c.oid = to_regclass($1) \
               AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')",
            &[&rule.source.quoted()],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The legacy table's grants, given on `view` too.
fn grant_script(view: &str, grants: &[(String, String)]) -> String {
    let mut sql = format!("GRANT USAGE ON SCHEMA {} TO PUBLIC;\n", write_view::SCHEMA);
    for (role, privilege) in grants {
        sql.push_str(&format!("GRANT {privilege} ON {view} TO {role};\n"));
    }
    sql
}

/// The default expressions of the target's columns.
async fn target_defaults(
    client: &Client,
    rule: &Rule,
) -> Result<Vec<(String, String)>, InstallError> {
    let rows = client
        .query(
            "SELECT a.attname::text, pg_get_expr(d.adbin, d.adrelid) \
             FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
             WHERE d.adrelid = to_regclass($1)",
            &[&rule.target.quoted()],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Whether the write view of `rule` is visible through `client` (the primary): the target is
/// in the primary's own database.
pub async fn visible(client: &Client, rule: &Rule) -> Result<bool, InstallError> {
    let view = write_view::view_name(rule);
    let row = client
        .query_one(
            &format!("SELECT to_regclass({}) IS NOT NULL", quote_literal(&view)),
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Whether the server of `client` can prepare transactions (`max_prepared_transactions` > 0).
pub async fn two_phase(client: &Client) -> Result<bool, InstallError> {
    let row = client
        .query_one(
            "SELECT current_setting('max_prepared_transactions')::int > 0",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// How many rows of the source are outside the rule's `where`.
pub async fn rows_outside(client: &Client, rule: &Rule) -> Result<u64, InstallError> {
    let Some(filter) = &rule.filter else {
        return Ok(0);
    };
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE NOT coalesce(({filter}), false)",
                rule.source.quoted()
            ),
            &[],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The sibling views created by this process.
static MODES: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Makes sure the sibling view for `mode` of `rule` exists, creating it through `url`.
pub async fn ensure_mode(url: &PgUrl, rule: &Rule, mode: &str) -> Result<(), InstallError> {
    let view = write_view::mode_view_name(rule, mode);
    let known = |v: &str| {
        MODES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_default()
            .contains(v)
    };
    if known(&view) {
        return Ok(());
    }
    let client = connect(url).await?;
    let (rest, grants) = source_here(&client, rule).await?;
    let mut script = write_view::mode_view_script(rule, mode, rest)
        .ok_or_else(|| InstallError::Unchecked(rule.source.to_string()))?;
    script.push_str(&grant_script(&view, &grants));
    client
        .batch_execute(&crate::mirror::under_schema_lock(&script))
        .await?;
    MODES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_default()
        .insert(view);
    Ok(())
}
