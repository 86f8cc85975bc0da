//! A batch's statements on their way to the secondary: each prepared once per connection
//! (cached by SQL and parameter types), queued, then sent together, pipelined, with their answers
//! taken in order and checked into the batch's write comparisons.

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use super::wire::{classify, param_oid, params};
use super::{Applier, ApplyError};
use crate::mirror::compare::{Verb, WriteCheck};
use crate::mirror::{Row, Value};
use crate::rules::TableName;

/// At most this many statements are in flight at once. Order matters (a key written twice in a
/// batch): tokio-postgres sends a request when its future is first polled, and futures-util's
/// `join_all` polls up to 30 futures in order (above that it switches to `FuturesOrdered`,
/// whose first polls are not promised in order), so keep this at 30 or below.
const PIPELINE_DEPTH: usize = 30;
/// Prepared statements kept per connection, at most (then the cache starts again).
const MAX_STATEMENTS: usize = 1000;

/// One statement of a batch waiting in the pipeline, with what an error report needs.
pub(super) struct Pending {
    stmt: Statement,
    values: Vec<Value>,
    txn: usize,
    /// `None` for the batch's own statements (BEGIN, settings, position, COMMIT).
    table: Option<TableName>,
    key: Option<Row>,
    answer: Answer,
}

/// What a queued statement's answer is checked for (the write comparison).
pub(super) enum Answer {
    Unchecked,
    /// The statement should find its row (a delete of a row the primary had).
    Found {
        verb: Verb,
        key: Row,
    },
    /// An upsert (`RETURNING (xmax = 0)`): did it insert, as the primary's `verb` says?
    Upsert {
        verb: Verb,
        key: Row,
    },
    /// A replayed statement: its row count against the primary's tag.
    Statement {
        sql: String,
        tag: String,
        filtered: bool,
    },
}

impl Answer {
    /// Checks answer `n` (rows affected; for an upsert, 1 when it inserted).
    fn check(&self, check: &mut WriteCheck, table: &TableName, n: u64) {
        match self {
            Answer::Unchecked => {}
            Answer::Found { verb, key } => check.row(table, *verb, n > 0, key),
            Answer::Upsert { verb, key } => {
                check.row(table, *verb, (n == 1) == (*verb == Verb::Insert), key)
            }
            Answer::Statement { sql, tag, filtered } => {
                check.statement(table, sql, tag, n, *filtered)
            }
        }
    }
}

impl Applier {
    /// Queues one of the batch's own statements (transaction control, settings, position).
    pub(super) async fn control(
        &mut self,
        client: &Client,
        sql: &str,
        values: &[&Value],
    ) -> Result<(), ApplyError> {
        let stmt = self
            .prepare(client, sql, values)
            .await
            .map_err(|e| classify(&e, self.txn, None, None))?;
        self.pipeline.push(Pending {
            stmt,
            values: values.iter().map(|v| (*v).clone()).collect(),
            txn: self.txn,
            table: None,
            key: None,
            answer: Answer::Unchecked,
        });
        Ok(())
    }

    /// Queues one statement, its answer to be checked for `answer` (see [`Applier::flush`]).
    pub(super) async fn exec(
        &mut self,
        client: &Client,
        sql: &str,
        values: &[&Value],
        table: &TableName,
        key: Option<&Row>,
        answer: Answer,
    ) -> Result<(), ApplyError> {
        let stmt = self
            .prepare(client, sql, values)
            .await
            .map_err(|e| classify(&e, self.txn, Some(table), key))?;
        self.pipeline.push(Pending {
            stmt,
            values: values.iter().map(|v| (*v).clone()).collect(),
            txn: self.txn,
            table: Some(table.clone()),
            key: key.cloned(),
            answer,
        });
        Ok(())
    }

    /// Sends the queued statements, pipelined, and waits for their answers, which go to their
    /// transaction's write comparison. The first error in order is the cause (the ones after it
    /// fail because the transaction is aborted).
    pub(super) async fn flush(&mut self, client: &Client) -> Result<(), ApplyError> {
        let pending = std::mem::take(&mut self.pipeline);
        for chunk in pending.chunks(PIPELINE_DEPTH) {
            let results =
                futures_util::future::join_all(chunk.iter().map(|p| send(client, p))).await;
            for (p, r) in chunk.iter().zip(results) {
                let n = r.map_err(|e| classify(&e, p.txn, p.table.as_ref(), p.key.as_ref()))?;
                if let (Some(check), Some(table)) = (self.checks.get_mut(p.txn), &p.table) {
                    p.answer.check(check, table, n);
                }
            }
        }
        Ok(())
    }

    /// A prepared statement with the values' parameter types, cached per connection.
    pub(super) async fn prepare(
        &mut self,
        client: &Client,
        sql: &str,
        values: &[&Value],
    ) -> Result<Statement, tokio_postgres::Error> {
        let oids: Vec<u32> = values.iter().map(|v| param_oid(v)).collect();
        let key = (sql.to_string(), oids);
        if let Some(s) = self.statements.get(&key) {
            return Ok(s.clone());
        }
        let types: Vec<Type> = key
            .1
            .iter()
            .map(|&o| Type::from_oid(o).unwrap_or(Type::TEXT))
            .collect();
        let stmt = client.prepare_typed(sql, &types).await?;
        if self.statements.len() > MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(key, stmt.clone());
        Ok(stmt)
    }
}

/// Runs one queued statement: rows affected, or for an upsert 1 when it inserted.
async fn send(client: &Client, p: &Pending) -> Result<u64, tokio_postgres::Error> {
    let values: Vec<&Value> = p.values.iter().collect();
    match p.answer {
        // `DO NOTHING` returns no row when the target had it.
        Answer::Upsert { .. } => client.query(&p.stmt, &params(&values)).await.map(|rows| {
            u64::from(
                rows.iter()
                    .any(|r| r.get::<_, Option<bool>>(0) == Some(true)),
            )
        }),
        _ => client.execute(&p.stmt, &params(&values)).await,
    }
}
