//! A switch of a table's reads to the secondary (or to more of it) agreed by every live
//! instance: the switching instance proposes an epoch (`pgbridge.switches`, direction
//! [`READS_ON_SECONDARY`]); each other instance checks its own mirror against the read gate's
//! bounds (lag, parked, halted, connected: the reads it serves from the secondary are only as
//! fresh as its own applier) and acknowledges, or says why not. One not ready, or silent past
//! the bound, refuses the switch, and nothing changes; `--force` skips the agreement as it skips
//! the gate. Then the flag is made and published as any read flag is (src/state/mod.rs).
//! Nothing is held: a read served by either side meanwhile is the same read.

use std::time::Duration;

use tokio_postgres::Client;
use tracing::info;

use super::epoch::ACK_SQL;
use super::SharedState;
use crate::rules::TableName;

/// The direction an epoch of reads on the secondary carries.
pub(super) const READS_ON_SECONDARY: &str = "reads:secondary";

/// How long the other instances have to answer.
const READS_AGREE_WITHIN: Duration = Duration::from_secs(5);

impl SharedState {
    /// Asks every other live instance whether its mirror is ready for `table`'s reads on the
    /// secondary; why not, when one is not (or did not answer).
    pub async fn agree_reads(&self, table: &TableName) -> Result<(), String> {
        let Some(epoch) = self
            .propose(table, READS_ON_SECONDARY, READS_AGREE_WITHIN, false)
            .await?
        else {
            return Ok(());
        };
        let client = self.connected_client().await?;
        client
            .execute(
                "UPDATE pgbridge.switches SET state = 'done' WHERE epoch = $1 AND state = 'proposed'",
                &[&epoch],
            )
            .await
            .map_err(|e| crate::net::error_text(&e))?;
        info!(epoch, table = %table, "reads on the secondary agreed by every live instance");
        Ok(())
    }

    /// This instance's answer to a proposal of `table`'s reads on the secondary: ready, or why
    /// not.
    pub(super) async fn answer_reads(
        &self,
        client: &Client,
        epoch: i64,
        table: &TableName,
    ) -> Result<(), String> {
        let why = self.reads.local_refusals();
        let error = (!why.is_empty()).then(|| why.join("; "));
        client
            .query(ACK_SQL, &[&epoch, &self.instance, &why.is_empty(), &error])
            .await
            .map_err(|e| crate::net::error_text(&e))?;
        info!(epoch, table = %table, ready = why.is_empty(), refused = ?error, "answered a proposal of reads on the secondary");
        Ok(())
    }
}
