//! A TRUNCATE of the source: every row the rule owns on the target is deleted.

use tokio_postgres::Client;

use super::pipeline::Answer;
use super::plan::Target;
use super::{Applier, ApplyError};

impl Applier {
    pub(super) async fn truncate(
        &mut self,
        client: &Client,
        t: Target<'_>,
    ) -> Result<(), ApplyError> {
        let truncate = &t.plan.plan.truncate;
        self.exec(client, truncate, &[], t.table, None, Answer::Unchecked)
            .await
    }
}
