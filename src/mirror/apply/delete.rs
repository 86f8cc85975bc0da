//! A deleted row: its key deleted on the target, unless the capture saw it outside the rule's
//! `where` (it was never the target's).

use tokio_postgres::Client;

use super::pipeline::Answer;
use super::plan::{key_values, Target};
use super::{Applier, ApplyError};
use crate::mirror::compare::Verb;
use crate::mirror::Row;

impl Applier {
    pub(super) async fn delete(
        &mut self,
        client: &Client,
        t: Target<'_>,
        key: &Row,
        in_filter: Option<bool>,
    ) -> Result<(), ApplyError> {
        if in_filter == Some(false) {
            return Ok(());
        }
        let values = key_values(t.rule, key).map_err(|e| self.refused(t.table, Some(key), e))?;
        // A row the primary deleted inside the migration was the target's.
        let answer = if in_filter == Some(true) || t.rule.filter.is_none() {
            Answer::Found {
                verb: Verb::Delete,
                key: key.clone(),
            }
        } else {
            Answer::Unchecked
        };
        self.exec(
            client,
            &t.plan.plan.delete,
            &values,
            t.table,
            Some(key),
            answer,
        )
        .await
    }
}
