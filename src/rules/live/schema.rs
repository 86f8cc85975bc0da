//! The live shape of a table, read from PostgreSQL's catalogs: its columns in order with their
//! types, and the column sets of its unique indexes.

use tokio_postgres::Client;

use crate::rules::{Column, TableName, TableSchema};

/// Reads a table's columns and unique keys; `None` when it does not exist.
pub async fn table_schema(
    client: &Client,
    table: &TableName,
) -> Result<Option<TableSchema>, tokio_postgres::Error> {
    let name = table.quoted();
    let columns = columns(client, &name).await?;
    if columns.is_empty() {
        return Ok(None);
    }
    let unique_keys = unique_keys(client, &name).await?;
    Ok(Some(TableSchema {
        columns,
        unique_keys,
    }))
}

/// The table's columns in table order; none when the table does not exist.
async fn columns(client: &Client, name: &str) -> Result<Vec<Column>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typcategory::text, \
                    a.attnotnull, a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '' \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&name],
        )
        .await?;
    let columns = rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            category: r.get::<_, String>(2).chars().next().unwrap_or('X'),
            not_null: r.get(3),
            has_default: r.get(4),
        })
        .collect();
    Ok(columns)
}

/// The column sets of the table's unique indexes, leaving out partial and expression indexes
/// (an upsert's `ON CONFLICT` on plain columns cannot use them).
async fn unique_keys(
    client: &Client,
    name: &str,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let keys = client
        .query(
            "SELECT array(SELECT a.attname::text FROM unnest(i.indkey) k \
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k) \
             FROM pg_index i WHERE i.indrelid = to_regclass($1) AND i.indisunique \
               AND i.indpred IS NULL AND i.indexprs IS NULL",
            &[&name],
        )
        .await?;
    Ok(keys.iter().map(|r| r.get::<_, Vec<String>>(0)).collect())
}
