//! Checks rules against the live schemas, with pgbridge's own credentials from the config urls.
//!
//! PostgreSQL is the judge wherever it can be: a `where` is prepared against the source, a
//! `values` literal is cast to its target column's type. The catalogs give the columns, their
//! types, and the unique indexes that make a key a key. The columns found are kept on the rule:
//! the read, capture and apply rewrites need them.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::schema::{table_schema, Column, TableSchema};
use crate::config::PgUrl;
use crate::rules::parse::ParsedRule;
use crate::rules::{Problem, Rule, RulesError};

async fn connect(url: &PgUrl, which: &'static str) -> Result<Client, RulesError> {
    let unreachable = |message: String| RulesError::Unreachable { which, message };
    let connecting = url.pg_config().connect(NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| unreachable(format!("{}: timed out", url.redacted())))?
        .map_err(|e| unreachable(format!("{}: {e}", url.redacted())))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, which, "rules check connection ended");
        }
    });
    Ok(client)
}

/// Checks every rule online; fills in each rule's source and target columns.
pub async fn check(
    rules: &mut [ParsedRule],
    primary: &PgUrl,
    secondary: Option<&PgUrl>,
) -> Result<Vec<Problem>, RulesError> {
    let mut problems = Vec::new();
    if rules.is_empty() {
        return Ok(problems);
    }
    let source_db = connect(primary, "primary").await?;
    let target_db = match secondary {
        Some(url) => Some(connect(url, "secondary").await?),
        None => None,
    };
    for parsed in rules.iter_mut() {
        let lost = |e: tokio_postgres::Error, which| RulesError::Unreachable {
            which,
            message: e.to_string(),
        };
        let source = table_schema(&source_db, &parsed.rule.source)
            .await
            .map_err(|e| lost(e, "primary"))?;
        let Some(source) = source else {
            problems.push(parsed.problem(
                "source",
                format!(
                    "source table `{}` does not exist on the primary",
                    parsed.rule.source
                ),
            ));
            continue;
        };
        problems.extend(check_source(parsed, &source));
        problems.extend(check_where(parsed, &source_db).await);
        parsed.rule.source_columns = Some(source.columns.clone());
        let Some(target_db) = &target_db else {
            problems.push(parsed.problem(
                "target",
                "no [secondary] in the config to check the target against",
            ));
            continue;
        };
        let target = table_schema(target_db, &parsed.rule.target)
            .await
            .map_err(|e| lost(e, "secondary"))?;
        let Some(target) = target else {
            problems.push(parsed.problem(
                "target",
                format!(
                    "target table `{}` does not exist on the secondary",
                    parsed.rule.target
                ),
            ));
            continue;
        };
        problems.extend(check_target(parsed, &source, &target));
        problems.extend(check_values(parsed, &target, target_db).await);
        parsed.rule.conflict_key = conflict_key(&parsed.rule, &target);
        parsed.rule.target_columns = Some(target.columns);
    }
    Ok(problems)
}

fn check_source(parsed: &ParsedRule, source: &TableSchema) -> Vec<Problem> {
    let rule = &parsed.rule;
    let mut problems = Vec::new();
    let named = rule
        .key
        .iter()
        .map(|k| ("key", k))
        .chain(rule.columns.iter().map(|(s, _)| ("columns", s)));
    let named = named
        .chain(rule.translate.iter().map(|(c, _)| ("translate", c)))
        .chain(
            rule.compare
                .ignore_columns
                .iter()
                .map(|c| ("compare.ignore_columns", c)),
        );
    for (section, col) in named {
        if source.column(col).is_none() {
            problems.push(parsed.problem(
                &format!("{section}.{col}"),
                format!(
                    "column `{col}` does not exist in source table `{}`",
                    rule.source
                ),
            ));
        }
    }
    let unique = source
        .unique_keys
        .iter()
        .any(|k| k.iter().all(|c| rule.key.contains(c)));
    if !rule.key.is_empty() && !unique {
        problems.push(parsed.problem(
            "key",
            format!(
                "key ({}) is not unique on `{}`: no primary key or unique index covers it",
                rule.key.join(", "),
                rule.source
            ),
        ));
    }
    problems
}

async fn check_where(parsed: &ParsedRule, client: &Client) -> Option<Problem> {
    let filter = parsed.rule.filter.as_ref()?;
    let sql = format!(
        "SELECT 1 FROM {} WHERE ({filter}) LIMIT 0",
        parsed.rule.source.quoted()
    );
    let e = client.prepare(&sql).await.err()?;
    let message = e
        .as_db_error()
        .map_or(e.to_string(), |d| d.message().to_string());
    Some(parsed.problem(
        "where",
        format!("`where` is not valid on the source: {message}"),
    ))
}

fn check_target(parsed: &ParsedRule, source: &TableSchema, target: &TableSchema) -> Vec<Problem> {
    let rule = &parsed.rule;
    let mut problems = Vec::new();
    for col in &source.columns {
        let to = rule.target_column(&col.name);
        let at = if to == col.name {
            "source".to_string()
        } else {
            format!("columns.{}", col.name)
        };
        match target.column(to) {
            None => problems.push(parsed.problem(
                &at,
                format!(
                    "source column `{}` has no column `{to}` in target table `{}`",
                    col.name, rule.target
                ),
            )),
            Some(t) if !compatible(col, t) => problems.push(parsed.problem(
                &at,
                format!(
                    "column `{}` is {} on the source but `{to}` is {} on the target",
                    col.name, col.type_name, t.type_name
                ),
            )),
            Some(_) => {}
        }
    }
    problems.extend(unset_target_columns(parsed, source, target));
    if !rule.key.is_empty() && conflict_key(rule, target).is_none() {
        problems.push(parsed.problem(
            "key",
            format!(
                "({}) does not contain a primary key or unique index of target `{}`: the mirror's upsert needs one",
                rule.target_key().join(", "),
                rule.target
            ),
        ));
    }
    problems
}

/// The smallest unique key of the target within the mapped key plus the `values` columns: the
/// `ON CONFLICT` target of the mirror's upserts.
pub fn conflict_key(rule: &Rule, target: &TableSchema) -> Option<Vec<String>> {
    let key = rule.target_key();
    target
        .unique_keys
        .iter()
        .filter(|k| k.iter().all(|c| key.contains(c)))
        .min_by_key(|k| k.len())
        .cloned()
}

fn compatible(source: &Column, target: &Column) -> bool {
    source.type_name == target.type_name || source.category == target.category
}

fn unset_target_columns(
    parsed: &ParsedRule,
    source: &TableSchema,
    target: &TableSchema,
) -> Vec<Problem> {
    let rule = &parsed.rule;
    let fed = |name: &str| {
        source
            .columns
            .iter()
            .any(|c| rule.target_column(&c.name) == name)
            || rule.values.iter().any(|(v, _)| v == name)
    };
    target
        .columns
        .iter()
        .filter(|c| c.not_null && !c.has_default && !fed(&c.name))
        .map(|c| {
            parsed.problem(
                "target",
                format!(
                    "target column `{}` is NOT NULL without a default, and neither a source column nor `values` sets it",
                    c.name
                ),
            )
        })
        .collect()
}

async fn check_values(parsed: &ParsedRule, target: &TableSchema, client: &Client) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (col, literal) in &parsed.rule.values {
        let at = format!("values.{col}");
        let Some(column) = target.column(col) else {
            problems.push(parsed.problem(
                &at,
                format!(
                    "column `{col}` does not exist in target table `{}`",
                    parsed.rule.target
                ),
            ));
            continue;
        };
        let sql = format!("SELECT ({literal})::{}", column.type_name);
        if let Err(e) = client.simple_query(&sql).await {
            let message = e
                .as_db_error()
                .map_or(e.to_string(), |d| d.message().to_string());
            problems.push(parsed.problem(
                &at,
                format!("`{literal}` is not a {}: {message}", column.type_name),
            ));
        }
    }
    problems
}
