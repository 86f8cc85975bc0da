//! An upserted row (an INSERT's or UPDATE's row image): upserted on the target when it is inside
//! the rule's `where`, its key deleted there when not; an upsert the transaction's next change
//! supersedes is left out.

use tokio_postgres::Client;

use super::pipeline::Answer;
use super::plan::{key_row, key_values, row_values, Target};
use super::wire::{classify, params};
use super::{Applier, ApplyError};
use crate::mirror::compare::Verb;
use crate::mirror::{Change, ChangeOp, Effect, Row, Value};

impl Applier {
    /// An upsert change. What the primary did to the row (the first of its upserts left out,
    /// else this one's) says what the target's upsert should do, when the comparison can tell.
    pub(super) async fn upsert_row(
        &mut self,
        client: &Client,
        target: Target<'_>,
        row: &Row,
        in_filter: Option<bool>,
        effect: Option<Effect>,
    ) -> Result<(), ApplyError> {
        let effect = self.carried.take().unwrap_or(effect);
        let expect = match effect {
            Some(Effect::Inserted) => Some(Verb::Insert),
            // Unless the `where` follows the key, an UPDATE may bring a row in.
            Some(Effect::Updated) if target.plan.follows_key => Some(Verb::Update),
            _ => None,
        };
        self.upsert(client, target, row, in_filter, expect).await
    }

    /// Upserts a row that matches the rule's `where`; deletes the key of one that does not.
    /// `expect` is what the primary did to it, when the comparison can tell.
    pub(super) async fn upsert(
        &mut self,
        client: &Client,
        t: Target<'_>,
        row: &Row,
        in_filter: Option<bool>,
        expect: Option<Verb>,
    ) -> Result<(), ApplyError> {
        let values = row_values(t.rule, row).map_err(|e| self.refused(t.table, Some(row), e))?;
        if !self.in_filter(client, t, row, in_filter, &values).await? {
            let key = key_values(t.rule, row).map_err(|e| self.refused(t.table, Some(row), e))?;
            let delete = &t.plan.plan.delete;
            let unchecked = Answer::Unchecked;
            return self
                .exec(client, delete, &key, t.table, Some(row), unchecked)
                .await;
        }
        let answer = match expect {
            Some(verb) => Answer::Upsert {
                verb,
                key: key_row(t.rule, row),
            },
            None => Answer::Unchecked,
        };
        self.exec(
            client,
            &t.plan.plan.upsert,
            &values,
            t.table,
            Some(row),
            answer,
        )
        .await
    }

    /// Whether the row is inside the rule's `where`: as the capture evaluated it, or else asked
    /// of the secondary (after what is queued, since the answer decides what comes next).
    async fn in_filter(
        &mut self,
        client: &Client,
        t: Target<'_>,
        row: &Row,
        in_filter: Option<bool>,
        values: &[&Value],
    ) -> Result<bool, ApplyError> {
        let sql = match (in_filter, &t.plan.filter) {
            (Some(m), _) => return Ok(m),
            (None, None) => return Ok(true),
            (None, Some(sql)) => sql,
        };
        self.flush(client).await?;
        let txn = self.txn;
        let fail = |e: tokio_postgres::Error| classify(&e, txn, Some(t.table), Some(row));
        let stmt = self.prepare(client, sql, values).await.map_err(fail)?;
        let r = client
            .query_one(&stmt, &params(values))
            .await
            .map_err(fail)?;
        Ok(r.get::<_, Option<bool>>(0).unwrap_or(false))
    }

    /// An upsert whose row the transaction's next change upserts again (same table, same key):
    /// the next one alone decides the target row (its image is whole, and the batch is one
    /// secondary transaction), so the first need not run. An upsert then update of one row is
    /// the commonest transaction of all.
    pub(super) fn superseded(&self, change: &Change, next: Option<&Change>) -> bool {
        let (ChangeOp::Upsert { row, .. }, Some(next)) = (&change.op, next) else {
            return false;
        };
        let ChangeOp::Upsert { row: next_row, .. } = &next.op else {
            return false;
        };
        if next.table != change.table {
            return false;
        }
        let rules = self.rules.load();
        let Some(rule) = rules.get(&change.table) else {
            return false;
        };
        matches!(
            (key_values(rule, row), key_values(rule, next_row)),
            (Ok(a), Ok(b)) if a == b
        )
    }
}
