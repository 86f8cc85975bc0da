//! The live shape of a table, read from PostgreSQL's catalogs: its columns in order with their
//! types, and the column sets of its unique indexes.

use tokio_postgres::Client;

use crate::rules::TableName;

/// A column of a live table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type`, e.g. `numeric(18,6)`.
    pub type_name: String,
    /// `pg_type.typcategory`: types of one category convert into each other.
    pub category: char,
    pub not_null: bool,
    pub has_default: bool,
}

/// A live table: its columns and the column sets of its unique indexes.
#[derive(Debug, Clone)]
pub struct TableSchema {
    pub columns: Vec<Column>,
    pub unique_keys: Vec<Vec<String>>,
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Reads a table's columns and unique keys; `None` when it does not exist.
pub async fn table_schema(
    client: &Client,
    table: &TableName,
) -> Result<Option<TableSchema>, tokio_postgres::Error> {
    let name = table.quoted();
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
    if rows.is_empty() {
        return Ok(None);
    }
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
    let keys = client
        .query(
            "SELECT array(SELECT a.attname::text FROM unnest(i.indkey) k \
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k) \
             FROM pg_index i WHERE i.indrelid = to_regclass($1) AND i.indisunique \
               AND i.indpred IS NULL AND i.indexprs IS NULL",
            &[&name],
        )
        .await?;
    let unique_keys = keys.iter().map(|r| r.get::<_, Vec<String>>(0)).collect();
    Ok(Some(TableSchema {
        columns,
        unique_keys,
    }))
}
