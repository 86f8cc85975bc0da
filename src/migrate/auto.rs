//! The jobs pgbridge starts by itself: a verify of every table every `[verify] every_secs`,
//! and, for a table the mirror is known to have missed a write to (src/mirror/stale.rs), a
//! verify of it followed by a repair of what differs, after which the mark is cleared unless
//! the table was marked again meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn, Instrument};

use super::{JobError, Jobs};
use crate::config::VerifyConfig;
use crate::mirror::stale;

/// How often marks and the schedule are looked at.
const TICK: Duration = Duration::from_secs(1);
/// After a failed automatic repair, how long before the next try.
const BACKOFF: Duration = Duration::from_secs(30);

impl Jobs {
    /// Starts the task that runs the scheduled verifies and the automatic repairs.
    pub(super) fn spawn_auto(self: &Arc<Self>, cfg: VerifyConfig) {
        let jobs = self.clone();
        let span = tracing::info_span!("auto_jobs");
        tokio::spawn(async move { jobs.auto_loop(cfg).await }.instrument(span));
    }

    async fn auto_loop(self: Arc<Self>, cfg: VerifyConfig) {
        let every = Duration::from_secs(cfg.every_secs);
        let mut next_verify = (cfg.every_secs > 0).then(|| Instant::now() + every);
        let mut retry_at: std::collections::HashMap<String, Instant> = Default::default();
        loop {
            tokio::time::sleep(TICK).await;
            if cfg.auto_repair {
                for (table, mark) in stale::all() {
                    if retry_at.get(&table).is_some_and(|t| *t > Instant::now()) {
                        continue;
                    }
                    if let Err(e) = self.repair_marked(&table, mark.generation, &cfg).await {
                        warn!(table = %table, error = %e, "the automatic repair failed; retrying later");
                        retry_at.insert(table, Instant::now() + BACKOFF);
                    }
                }
            }
            if next_verify.is_some_and(|t| t <= Instant::now()) {
                next_verify = Some(Instant::now() + every);
                match self
                    .start_verify(&[], None, Some(cfg.max_rows_per_sec))
                    .await
                {
                    Ok(id) => info!(job = id, "scheduled verify started"),
                    Err(e) => warn!(error = %e, "the scheduled verify did not start"),
                }
            }
        }
    }

    /// Verifies a marked table, repairs what differs, and clears the mark when the table is
    /// equal again (unless it was marked again since `generation`).
    async fn repair_marked(
        self: &Arc<Self>,
        table: &str,
        generation: u64,
        cfg: &VerifyConfig,
    ) -> Result<(), JobError> {
        let tables = [table.to_string()];
        let verify = self
            .start_verify(&tables, None, Some(cfg.max_rows_per_sec))
            .await?;
        info!(
            table,
            job = verify,
            "verifying a table the mirror missed a write to"
        );
        let clean = self.ended(verify).await?;
        if !clean {
            let repair = self.start_repair(table, Some(verify)).await?;
            info!(table, job = repair, "repairing what the mirror missed");
            if !self.ended(repair).await? {
                return Err(JobError::Chunk(format!(
                    "repair job {repair} left differences"
                )));
            }
        }
        if stale::clear(table, generation) {
            info!(table, "the table is equal to the source again");
        }
        Ok(())
    }

    /// Waits for a job to end; whether it ended done and clean.
    async fn ended(&self, id: i64) -> Result<bool, JobError> {
        loop {
            let job = self.get(id).await?;
            match job.row.state.as_str() {
                "running" => tokio::time::sleep(Duration::from_millis(200)).await,
                "done" => {
                    let clean = job.row.result.as_ref().and_then(|r| r["clean"].as_bool());
                    return Ok(clean == Some(true));
                }
                state => {
                    let why = job.row.error.unwrap_or_else(|| state.to_string());
                    return Err(JobError::Chunk(format!("job {id} ended {state}: {why}")));
                }
            }
        }
    }
}
