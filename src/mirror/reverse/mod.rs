//! The reverse mirror: once the application writes a rule's TARGET table on the secondary, every
//! committed change flows back to the legacy SOURCE table on the primary, in commit order,
//! exactly once, through a pgbridge SIGKILL and a primary that is down for a while. Built the
//! way pgq and Londiste move changes.
//!
//! - [`capture`]: a row trigger on the target queues each change of a row the rule owns in
//!   `pgbridge.reverse_changes` on the secondary, inside the writing transaction (as durable as
//!   the write; gone with a rollback). [`enable`] installs it, [`disable`] drops it.
//! - [`convert`]: a page of queued changes in the source's terms, computed on the secondary by
//!   the reads' own mapping (`sql/view.rs`).
//! - `queue.rs`: the secondary's side: a batch's snapshot, its pages, forgetting what was applied.
//! - [`write`]: the primary's side: a page applied in one transaction with the position.
//! - `task.rs`: the applier's loop, its two connections and the backoff.
//! - [`stats`]: the figures ([`ReverseStats`]).
//!
//! **Batches in snapshot order.** Each batch ends at a snapshot of the secondary, `cur`
//! (`pg_current_snapshot()`), and holds every queued change whose transaction is visible in
//! `cur` but not in the previous batch's snapshot `prev`: committed changes, each in exactly one
//! batch, and never one of a transaction still running (it is in `cur`'s in-progress list and
//! falls in a later batch). Within a batch changes are applied in `seq` order, a page of
//! `page_size` at a time. This is commit order for every row, which is all the source table can
//! observe:
//!
//! - Two transactions that write the same row are serialized by its row lock: the second one's
//!   trigger runs, and takes its `seq`, only after the first committed. So the later commit has
//!   the larger `seq`, whichever transaction began (took its xid) first.
//! - If the later one is visible in a batch's `cur`, the earlier committed before `cur` was taken
//!   and is visible too: it is in the same batch (ordered by `seq`) or an earlier one.
//!
//! A batch's set of changes is fixed by its two snapshots (a transaction visible in `cur` has
//! committed; one that was not stays invisible in it), so each page is read by a statement of its
//! own, with no transaction held open on the secondary across a batch.
//!
//! A plain `seq` order without snapshots would skip changes: a transaction that took seq 4 and
//! commits after the one with seq 5 was read would be behind the position forever.
//!
//! **Exactly once.** A page's changes and the position (`prev`, `cur`, the page's last `seq`)
//! commit together on the primary (`pgbridge.reverse_applied`); only then are the rows deleted
//! on the secondary. On every (re)start the applier reads the position from the primary, resumes
//! the batch after its last `seq` (the batch's set of changes is fixed by its two snapshots),
//! and deletes what the position covers that a crash left behind. Each page first locks the
//! position row and checks it is still the one the applier last read or wrote: a killed
//! applier's COMMIT still in flight, or a second applier, makes it start over instead of
//! applying a page twice.
//!
//! Known limits: changes whose source has no rule (checked online) when their batch is applied
//! stay queued but are not applied later, should the rule come back; a TRUNCATE of the target
//! is not captured (row triggers do not see it); a primary statement that keeps failing (a
//! constraint only the source has) is retried forever, holding back the changes after it; two
//! appliers on one primary apply nothing twice but keep making each other start over.

pub mod capture;
pub mod convert;
mod queue;
pub mod stats;
mod task;
pub mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::PgUrl;
use crate::rules::RuleSet;

pub use capture::{disable, enable};
pub use stats::{ReverseReport, ReverseStats};

/// Where a batch stands: the two snapshots (text of `pg_snapshot`) and the last `seq` of the
/// batch applied. `prev` is `None` before the first batch, `cur` between batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Position {
    pub prev: Option<String>,
    pub cur: Option<String>,
    pub last_seq: i64,
}

/// How the reverse applier runs.
#[derive(Debug, Clone)]
pub struct ReverseConfig {
    /// pgbridge's own credentials on the primary (`[primary] url`).
    pub primary: PgUrl,
    /// `[secondary] url`.
    pub secondary: PgUrl,
    /// Changes per primary transaction.
    pub page_size: i64,
    /// How often an idle applier looks for changes.
    pub poll: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl ReverseConfig {
    /// The defaults: pages of 1000, a poll every 20 ms, backoff from 100 ms doubling to 2 s.
    pub fn new(primary: PgUrl, secondary: PgUrl) -> ReverseConfig {
        ReverseConfig {
            primary,
            secondary,
            page_size: 1000,
            poll: Duration::from_millis(20),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Why the applier lost a database (it retries after a backoff, from the primary's position).
#[derive(Debug, thiserror::Error)]
enum ReverseError {
    #[error("secondary: {}", crate::net::error_text(.0))]
    Secondary(#[source] tokio_postgres::Error),
    #[error("primary: {}", crate::net::error_text(.0))]
    Primary(#[source] tokio_postgres::Error),
    #[error("the primary's position is not the one this applier last saw (another applier, or a killed one's last commit)")]
    Moved,
}

/// The reverse applier task: applies queued changes of every rule in `rules` (the live rules,
/// read again for every page).
pub struct ReverseApplier {
    cfg: ReverseConfig,
    rules: Arc<ArcSwap<RuleSet>>,
    stats: Arc<ReverseStats>,
}

impl ReverseApplier {
    /// Starts the task.
    pub fn spawn(cfg: ReverseConfig, rules: Arc<ArcSwap<RuleSet>>) -> ReverseHandle {
        let stats = Arc::new(ReverseStats::default());
        let applier = ReverseApplier {
            cfg,
            rules,
            stats: stats.clone(),
        };
        let span = tracing::info_span!("reverse_mirror");
        let task = tokio::spawn(applier.run().instrument(span));
        ReverseHandle { stats, task }
    }
}

/// The running task; dropping it stops the task (as a kill would: nothing is lost).
pub struct ReverseHandle {
    stats: Arc<ReverseStats>,
    task: JoinHandle<()>,
}

impl ReverseHandle {
    pub fn stats(&self) -> &Arc<ReverseStats> {
        &self.stats
    }

    /// Waits until a count of the queue that began after this call found nothing queued;
    /// false on timeout.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let seen = self.stats.refreshes();
        loop {
            let counted = self.stats.refreshes() >= seen + 2;
            if counted && self.stats.queued.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the task at its next await point.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for ReverseHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
