//! Checks rules against the live schemas, with pgbridge's own credentials from the config urls.
//!
//! PostgreSQL is the judge wherever it can be: a `where` is prepared against the source, a
//! `values` literal is cast to its target column's type. The catalogs give the columns, their
//! types, and the unique indexes that make a key a key. The columns found are kept on the rule:
//! the read, capture and apply rewrites need them.

use std::time::Duration;

use tokio_postgres::Client;

use super::schema::table_schema;
use crate::config::PgUrl;
use crate::net::error_text;
use crate::rules::parse::ParsedRule;
use crate::rules::table::{check_source, check_target, conflict_key};
use crate::rules::{Problem, RulesError, TableName, TableSchema};

async fn connect(url: &PgUrl, which: &'static str) -> Result<Client, RulesError> {
    let unreachable = |message: String| RulesError::Unreachable { which, message };
    let connecting = url.connect();
    let (client, connection) = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| unreachable(format!("{}: timed out", url.redacted())))?
        .map_err(|e| unreachable(format!("{}: {}", url.redacted(), error_text(&e))))?;
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
        problems.extend(check_rule(parsed, &source_db, target_db.as_ref()).await?);
    }
    Ok(problems)
}

/// Checks one rule against both databases; records its columns and conflict key on it.
async fn check_rule(
    parsed: &mut ParsedRule,
    source_db: &Client,
    target_db: Option<&Client>,
) -> Result<Vec<Problem>, RulesError> {
    let rule = &parsed.rule;
    let Some(source) = live_table(source_db, &rule.source, "primary").await? else {
        let message = format!(
            "source table `{}` does not exist on the primary",
            rule.source
        );
        return Ok(vec![parsed.problem("source", message)]);
    };
    let mut problems = check_source(parsed, &source);
    problems.extend(check_where(parsed, source_db).await);
    parsed.rule.source_columns = Some(source.columns.clone());
    let Some(target_db) = target_db else {
        let message = "no [secondary] in the config to check the target against";
        problems.push(parsed.problem("target", message));
        return Ok(problems);
    };
    let Some(target) = live_table(target_db, &parsed.rule.target, "secondary").await? else {
        let message = format!(
            "target table `{}` does not exist on the secondary",
            parsed.rule.target
        );
        problems.push(parsed.problem("target", message));
        return Ok(problems);
    };
    problems.extend(check_target(parsed, &source, &target));
    problems.extend(check_values(parsed, &target, target_db).await);
    parsed.rule.conflict_key = conflict_key(&parsed.rule, &target);
    parsed.rule.target_columns = Some(target.columns);
    Ok(problems)
}

/// A table's live shape; a database lost in the middle of the checks is unreachable.
async fn live_table(
    client: &Client,
    table: &TableName,
    which: &'static str,
) -> Result<Option<TableSchema>, RulesError> {
    table_schema(client, table)
        .await
        .map_err(|e| RulesError::Unreachable {
            which,
            message: error_text(&e),
        })
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
