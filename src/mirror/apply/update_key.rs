//! An UPDATE that changed key columns: the old key deleted on the target, then the new row
//! upserted (or, outside the rule's `where`, its key deleted).

use tokio_postgres::Client;

use super::pipeline::Answer;
use super::plan::{key_values, Target};
use super::{Applier, ApplyError};
use crate::mirror::compare::Verb;
use crate::mirror::Row;

impl Applier {
    pub(super) async fn update_key(
        &mut self,
        client: &Client,
        t: Target<'_>,
        old_key: &Row,
        row: &Row,
        in_filter: Option<bool>,
    ) -> Result<(), ApplyError> {
        let values =
            key_values(t.rule, old_key).map_err(|e| self.refused(t.table, Some(old_key), e))?;
        // Without a `where` every source row is the target's: the old one was there.
        let answer = if t.rule.filter.is_none() {
            Answer::Found {
                verb: Verb::Update,
                key: old_key.clone(),
            }
        } else {
            Answer::Unchecked
        };
        let delete = &t.plan.plan.delete;
        self.exec(client, delete, &values, t.table, Some(old_key), answer)
            .await?;
        self.upsert(client, t, row, in_filter, None).await
    }
}
