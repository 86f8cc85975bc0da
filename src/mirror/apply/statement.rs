//! A replayed statement (`mirror = "statements"`): the write as rewritten to the target, run
//! with the client's parameters; its row count is compared with the primary's command tag.

use tokio_postgres::types::Type;
use tokio_postgres::Client;
use tracing::debug;

use super::pipeline::Answer;
use super::{Applier, ApplyError};
use crate::mirror::{Row, Value};
use crate::rules::{MirrorMode, TableName};

impl Applier {
    /// Queues the replay, unless the table has no statement-mode rule any more.
    pub(super) async fn replay(
        &mut self,
        client: &Client,
        table: &TableName,
        sql: &str,
        params: &Row,
        tag: Option<&String>,
    ) -> Result<(), ApplyError> {
        let live = self.rules.load();
        let Some(rule) = live
            .get(table)
            .filter(|r| r.mirror == MirrorMode::Statements)
        else {
            debug!(table = %table, "no statement-mode rule for the table any more: skipped");
            return Ok(());
        };
        let answer = match tag {
            Some(tag) => Answer::Statement {
                sql: sql.to_string(),
                tag: tag.clone(),
                filtered: rule.filter.is_some(),
            },
            None => Answer::Unchecked,
        };
        let values = untyped_as_unknown(params);
        let refs: Vec<&Value> = values.iter().collect();
        self.exec(client, sql, &refs, table, None, answer).await
    }
}

/// An untyped parameter (type OID 0) is left for the secondary to infer, as the primary did.
fn untyped_as_unknown(params: &Row) -> Vec<Value> {
    params
        .values
        .iter()
        .map(|v| Value {
            type_oid: if v.type_oid == 0 {
                Type::UNKNOWN.oid()
            } else {
                v.type_oid
            },
            ..v.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untyped_parameters_are_left_for_the_secondary_to_infer() {
        let params = Row::new()
            .with("", Value::text(0, "x"))
            .with("", Value::text(23, "1"));
        let values = untyped_as_unknown(&params);
        assert_eq!(values[0], Value::text(Type::UNKNOWN.oid(), "x"));
        assert_eq!(values[1], Value::text(23, "1"));
    }
}
