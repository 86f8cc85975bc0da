//! Parking: a transaction the secondary refuses for good is kept in `journal_dir/parked/` with
//! why, recorded as a `secondary_error` divergence, and then skipped or halted at by
//! `[mirror] on_error`; a halted one that goes through after all is unparked.

use std::sync::atomic::Ordering;

use tokio_postgres::Client;
use tracing::{error, info};

use super::batch::POSITION_SQL;
use super::task::ConnectionError;
use super::{Applier, Refusal};
use crate::config::OnError;
use crate::divergence::{record::rfc3339, Divergence, Kind};
use crate::mirror::compare::key_detail;
use crate::mirror::parked::{self, ParkedInfo};

impl Applier {
    /// Parks transaction `id` (once, however often halt mode tries it again) and, by config,
    /// skips it or halts at it.
    pub(super) async fn park(
        &mut self,
        client: &Client,
        id: u64,
        session: Option<u64>,
        refusal: Refusal,
    ) -> Result<(), ConnectionError> {
        if self.parked_here != Some(id) {
            let table = refusal.table.as_ref().map(|t| t.to_string());
            error!(id, table = ?table, sqlstate = ?refusal.sqlstate, error = %refusal.message,
                "the secondary refused a mirrored transaction: parked");
            self.keep_parked(id, &refusal);
            self.record_refusal(id, session, &refusal);
            self.stats.set_error(Some(refusal.message));
        }
        match self.cfg.on_error {
            OnError::Skip => {
                client
                    .execute(POSITION_SQL, &[&self.journal.uuid(), &(id as i64)])
                    .await
                    .map_err(ConnectionError::Position)?;
                self.parked_here = None;
                self.advance(id);
            }
            OnError::Halt => {
                self.parked_here = Some(id);
                self.stats.halted.store(true, Ordering::Relaxed);
                tokio::time::sleep(self.cfg.halt_retry).await;
            }
        }
        Ok(())
    }

    /// Parks an intent the journal cannot give back.
    pub(super) async fn park_unreadable(
        &mut self,
        client: &Client,
        id: u64,
        message: &str,
    ) -> Result<(), ConnectionError> {
        let refusal = Refusal {
            txn: 0,
            table: None,
            key: None,
            sqlstate: None,
            message: message.to_string(),
        };
        self.park(client, id, None, refusal).await
    }

    /// A halted transaction went through after all: the mirror resumes.
    pub(super) fn unparked(&self, id: u64) {
        parked::unpark(self.journal.dir(), id);
        self.stats
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.stats.halted.store(false, Ordering::Relaxed);
        info!(id, "parked transaction applied; the mirror resumes");
    }

    /// Keeps the intent's frame and why in the parked directory, and counts it.
    fn keep_parked(&self, id: u64, refusal: &Refusal) {
        let info = ParkedInfo {
            id,
            ts: rfc3339(std::time::SystemTime::now()),
            reason: refusal.message.clone(),
            table: refusal.table.as_ref().map(|t| t.to_string()),
            sqlstate: refusal.sqlstate.clone(),
        };
        match self.journal.raw(id) {
            Ok(raw) => {
                if let Err(e) = parked::park(self.journal.dir(), &raw, &info) {
                    error!(id, error = %e, "cannot keep the parked transaction");
                }
            }
            Err(e) => error!(id, error = %e, "cannot read the transaction to park"),
        }
        self.stats
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        metrics::counter!("pgbridge_mirror_parked_total").increment(1);
    }

    /// The `secondary_error` divergence of a parked transaction.
    fn record_refusal(&self, id: u64, session: Option<u64>, refusal: &Refusal) {
        let table = refusal.table.as_ref();
        let mut d = Divergence::new(
            Kind::SecondaryError,
            table.map_or(String::new(), |t| t.to_string()),
        );
        d.primary = "committed".into();
        d.secondary = refusal.sqlstate.clone().unwrap_or_else(|| "error".into());
        d.session = session;
        d.detail = serde_json::json!({
            "journal_id": id,
            "key": refusal.key.as_ref().map(|k| key_detail(k, self.recorder.redact())),
            "error": refusal.message,
            "action": match self.cfg.on_error { OnError::Halt => "halted", OnError::Skip => "skipped" },
        });
        self.recorder.record(d);
    }
}
