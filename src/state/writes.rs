//! Write directions in the shared state: `pgbridge.writes`, one row per table switched at least
//! once, written by the instance that made the switch (src/admin/writes.rs).
//!
//! A write switch is made only while no other instance is live (src/admin/writes.rs refuses it
//! otherwise), so the instances that adopt a direction from here are the ones that were down
//! or starting: an instance holds the writes of every migrated table from its start until it
//! has read the shared directions (or found the state unreachable for [`STARTUP_WAIT`]), and
//! adopts a direction that differs from its own as a switch does on one instance: new writes of
//! the table held, its own transactions that wrote it ended, its own forward journal applied
//! (what it mirrored before must land before the target becomes the authority), the direction
//! set, the writes released.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tracing::{info, warn};

use super::lock;
use crate::rules::TableName;
use crate::writes::{Direction, WriteFlags};

/// How long a starting instance holds writes waiting for the shared directions.
pub const STARTUP_WAIT: Duration = Duration::from_secs(5);

/// How long adopting a direction waits for this instance's own writing transactions.
const ADOPT_WAIT: Duration = Duration::from_secs(30);

pub(super) const SCHEMA_SQL: &str = "CREATE TABLE IF NOT EXISTS pgbridge.writes (\
    source text PRIMARY KEY, direction text NOT NULL, remote boolean NOT NULL DEFAULT false, \
    instance text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())";

const PUBLISH_SQL: &str = "WITH up AS (INSERT INTO pgbridge.writes (source, direction, remote, \
    instance) VALUES ($1, $2, $3, $4) ON CONFLICT (source) DO UPDATE SET direction = \
    EXCLUDED.direction, remote = EXCLUDED.remote, instance = EXCLUDED.instance, \
    updated_at = now() RETURNING 1) SELECT pg_notify('pgbridge_state', $1) FROM up";

/// The forward mirror's journal position and applied position.
pub type ForwardProbe = Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

/// This instance's write directions, and what adopting one needs.
pub struct SharedWrites {
    pub flags: Arc<WriteFlags>,
    /// This instance's forward mirror (last journaled, applied), drained before it adopts
    /// writes on the secondary.
    pub forward: Option<ForwardProbe>,
    /// The tables held since the start, until the shared directions were read.
    pub held_at_start: std::sync::Mutex<Vec<TableName>>,
}

impl SharedWrites {
    /// Holds the writes of `tables` until [`SharedWrites::release_start`].
    pub fn hold_at_start(&self, tables: Vec<TableName>) {
        for t in &tables {
            self.flags.hold(t);
        }
        *lock(&self.held_at_start) = tables;
    }

    /// Releases what the start held (once).
    pub fn release_start(&self) {
        for t in std::mem::take(&mut *lock(&self.held_at_start)) {
            self.flags.release(&t);
        }
    }

    /// Waits (at most `within`) until this instance's forward mirror applied everything it had
    /// journaled when asked; false past `within`.
    pub async fn forward_applied(&self, within: Duration) -> bool {
        let Some(probe) = &self.forward else {
            return true;
        };
        let (last, _) = probe();
        let started = std::time::Instant::now();
        while probe().1 < last {
            if started.elapsed() > within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Publishes `table`'s direction, with a NOTIFY.
    pub async fn publish(
        client: &Client,
        table: &TableName,
        direction: Direction,
        remote: bool,
        instance: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let source = table.to_string();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&source, &direction.as_str(), &remote, &instance];
        client.query(PUBLISH_SQL, &params).await.map(|_| ())
    }

    /// Adopts every shared direction that differs from this instance's.
    pub async fn apply(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT source, direction, remote, instance FROM pgbridge.writes",
                &[],
            )
            .await?;
        for row in rows {
            let (source, direction, remote, by): (String, String, bool, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let (Some(table), Some(to)) = (TableName::parse(&source), Direction::parse(&direction))
            else {
                continue;
            };
            let current = self.flags.load();
            if current.get(&table) == to && (to == Direction::Primary || current.remote == remote) {
                continue;
            }
            self.adopt(&table, current.get(&table), to, remote, &by)
                .await;
        }
        self.release_start();
        Ok(())
    }

    async fn adopt(
        &self,
        table: &TableName,
        from: Direction,
        to: Direction,
        remote: bool,
        by: &str,
    ) {
        let _one = self.flags.switching.lock().await;
        // Set meanwhile by the switch (or the part in one) that held the lock.
        let now = self.flags.load();
        if now.get(table) == to && (to == Direction::Primary || now.remote == remote) {
            return;
        }
        self.flags.hold(table);
        if !self.flags.wait_inactive(table, ADOPT_WAIT).await {
            warn!(table = %table, "adopting the shared write direction while transactions of this instance still write the table");
        }
        if from == Direction::Primary {
            while !self.forward_applied(ADOPT_WAIT).await {
                warn!(table = %table, "waiting for this instance's forward mirror before adopting writes on the secondary");
            }
        }
        let remote = (to != Direction::Primary).then_some(remote);
        match self.flags.set(table, to, remote) {
            Ok(()) => {
                info!(table = %table, from = from.as_str(), to = to.as_str(), by, "write direction adopted from the shared state")
            }
            Err(e) => warn!(table = %table, error = %e, "cannot keep the adopted write direction"),
        }
        self.flags.release(table);
    }
}
