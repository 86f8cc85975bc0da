//! One shadow connection to the secondary (pgbridge's own credentials, `[secondary] url`):
//! opened read-only and with a server-side `statement_timeout`, it pins the job's session
//! settings, keeps the statements it prepared, and runs a read to its rows as the wire carried
//! them (binary), ready to compare. A simple Query's read whose shape binds runs prepared with
//! its literals as parameters, so the secondary plans each shape once per connection.

use std::collections::{HashMap, HashSet};
use std::error::Error as StdError;
use std::time::Duration;

use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, Column, Row, Statement};
use tracing::{debug, Instrument};

use super::ShadowJob;
use crate::divergence::compare::{Field, ResultSet};
use crate::mirror::Value;

/// Statements kept prepared per connection.
const PREPARED_PER_CONN: usize = 256;

/// A secondary connection, with the settings it has and the statements it prepared.
pub(super) struct Conn {
    pub(super) client: Client,
    settings: Vec<(String, String)>,
    /// By text and parameter types.
    prepared: HashMap<(String, Vec<Type>), Statement>,
    /// Bound reads the secondary would not prepare: run as text.
    unbindable: HashSet<std::sync::Arc<str>>,
}

impl Conn {
    /// Connects as `config` says; every read on the connection is read-only and bounded by
    /// `timeout` on the server too.
    pub(super) async fn open(
        config: &crate::config::PgUrl,
        timeout: Duration,
    ) -> Result<Conn, tokio_postgres::Error> {
        let (client, connection) = config.connect().await?;
        let driver = async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "shadow connection to the secondary ended");
            }
        };
        // The connection outlives the read that opened it: a span of its own.
        tokio::spawn(driver.instrument(tracing::info_span!(parent: None, "shadow_connection")));
        // A shadow read can never write the secondary, and never outlives its timeout there.
        let ms = timeout.as_millis().max(1);
        client
            .batch_execute(&format!(
                "SET default_transaction_read_only = on; SET statement_timeout = {ms}; \
                 SET application_name = 'pgbridge shadow'"
            ))
            .await?;
        Ok(Conn {
            client,
            settings: Vec::new(),
            prepared: HashMap::new(),
            unbindable: HashSet::new(),
        })
    }

    /// Pins the settings, prepares (once per connection) and runs the read; binary results.
    pub(super) async fn run(
        &mut self,
        job: &ShadowJob,
    ) -> Result<ResultSet, tokio_postgres::Error> {
        if self.settings != job.settings && !job.settings.is_empty() {
            self.pin_settings(&job.settings).await?;
        }
        let (fields, rows) = match &job.bound {
            Some(b) if job.params.is_empty() => self.query_bound(b, &job.sql).await?,
            _ if job.params.is_empty() => self.query_unprepared(&job.sql).await?,
            _ => self.query_prepared(&job.sql, &job.params).await?,
        };
        let rows = rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<_, Raw>(i).map(|Raw(b)| b))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ResultSet { fields, rows })
    }

    /// Sets the session's settings (name, value) on the connection, in one statement.
    async fn pin_settings(
        &mut self,
        settings: &[(String, String)],
    ) -> Result<(), tokio_postgres::Error> {
        let sql = crate::sql::injected::set_config(settings.len());
        let params: Vec<&(dyn ToSql + Sync)> = settings
            .iter()
            .flat_map(|(k, v)| [k as &(dyn ToSql + Sync), v])
            .collect();
        self.client.execute(sql.as_str(), &params).await?;
        self.settings = settings.to_vec();
        Ok(())
    }

    /// A read without parameters, as simple-protocol texts are (each with its own literals, so
    /// seldom run twice): one round trip, without preparing it.
    async fn query_unprepared(
        &self,
        sql: &str,
    ) -> Result<(Vec<Field>, Vec<Row>), tokio_postgres::Error> {
        let rows = self.client.query_typed(sql, &[]).await?;
        let fields = match rows.first() {
            Some(r) => fields(r.columns()),
            // No row to name the columns: ask for them.
            None => fields(self.client.prepare(sql).await?.columns()),
        };
        Ok((fields, rows))
    }

    /// A simple Query's read bound to its literals (`b`), prepared once per connection; `sql`
    /// (its text with the literals) unprepared when the secondary will not prepare it.
    async fn query_bound(
        &mut self,
        b: &crate::sql::BoundRead,
        sql: &str,
    ) -> Result<(Vec<Field>, Vec<Row>), tokio_postgres::Error> {
        if self.unbindable.contains(&b.sql) {
            return self.query_unprepared(sql).await;
        }
        let values: Vec<Value> = (b.types.iter().zip(&b.values))
            .map(|(&ty, v)| Value::text(ty, v))
            .collect();
        match self.statement(&b.sql, &values).await {
            Ok(statement) => self.query_statement(&statement, &values).await,
            // The server refused to prepare it (a parameter whose type it cannot infer, say):
            // the literals decide what the text means.
            Err(e) if e.as_db_error().is_some() => {
                debug!(sql = %b.sql, error = %e, "the secondary would not prepare a bound shadow read");
                if self.unbindable.len() >= PREPARED_PER_CONN {
                    self.unbindable.clear();
                }
                self.unbindable.insert(b.sql.clone());
                self.query_unprepared(sql).await
            }
            Err(e) => Err(e),
        }
    }

    /// A read prepared once per connection (up to [`PREPARED_PER_CONN`] statements), with its
    /// parameters as the client bound them.
    async fn query_prepared(
        &mut self,
        sql: &str,
        values: &[Value],
    ) -> Result<(Vec<Field>, Vec<Row>), tokio_postgres::Error> {
        let statement = self.statement(sql, values).await?;
        self.query_statement(&statement, values).await
    }

    /// `sql` prepared for parameters like `values`, once per connection.
    async fn statement(
        &mut self,
        sql: &str,
        values: &[Value],
    ) -> Result<Statement, tokio_postgres::Error> {
        let key = (sql.to_string(), values.iter().map(param_type).collect());
        if let Some(s) = self.prepared.get(&key) {
            return Ok(s.clone());
        }
        let s = self.client.prepare_typed(sql, &key.1).await?;
        if self.prepared.len() >= PREPARED_PER_CONN {
            self.prepared.clear();
        }
        self.prepared.insert(key, s.clone());
        Ok(s)
    }

    async fn query_statement(
        &self,
        statement: &Statement,
        values: &[Value],
    ) -> Result<(Vec<Field>, Vec<Row>), tokio_postgres::Error> {
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let rows = self.client.query(statement, &params).await?;
        Ok((fields(statement.columns()), rows))
    }
}

/// The result fields of `columns`, every one in binary format.
fn fields(columns: &[Column]) -> Vec<Field> {
    columns
        .iter()
        .map(|c| Field::new(c.name(), c.type_().oid(), 1))
        .collect()
}

/// Any value's raw bytes, as the wire carried them.
struct Raw(Option<bytes::Bytes>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(Some(bytes::Bytes::copy_from_slice(raw))))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The parameter type a value is declared with: its own OID when built in (the same on every
/// server), else unknown, so the server infers it from the SQL.
fn param_type(v: &Value) -> Type {
    match v.type_oid {
        1..16384 => Type::from_oid(v.type_oid).unwrap_or(Type::UNKNOWN),
        _ => Type::UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_is_declared_with_its_builtin_type_or_left_to_the_server() {
        let value = |type_oid| Value::text(type_oid, "1");
        assert_eq!(param_type(&value(23)), Type::INT4);
        assert_eq!(param_type(&value(1184)), Type::TIMESTAMPTZ);
        // A user type's OID differs between servers; 0 is unspecified.
        assert_eq!(param_type(&value(16_500)), Type::UNKNOWN);
        assert_eq!(param_type(&value(0)), Type::UNKNOWN);
    }
}
