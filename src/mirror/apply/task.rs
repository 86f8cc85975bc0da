//! The applier task's loop: connect to the secondary and read the position, take the ready
//! intents (lingering for more), skip aborted ones, apply the rest batch by batch, advance the
//! position, and retry with backoff when the secondary fails.

use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::{debug, error, info, warn, Instrument};

use super::{Applier, ApplyError};
use crate::mirror::journal::Ready;
use crate::mirror::TxnRecord;

const SCHEMA_SQL: &str = "CREATE SCHEMA IF NOT EXISTS pgbridge; \
    CREATE TABLE IF NOT EXISTS pgbridge.applied (journal text PRIMARY KEY, id bigint NOT NULL, \
    applied_at timestamptz NOT NULL DEFAULT now())";
const READ_POSITION_SQL: &str = "SELECT id FROM pgbridge.applied WHERE journal = $1";
/// How long the loop waits for a journal change when nothing is ready (then looks again).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Journal transactions of one batch, by intent id: `None` for an aborted one.
pub(super) type Txns = [(u64, Option<TxnRecord>)];

/// The secondary's connection settings with `pgbridge.origin=forward` as a startup option:
/// the reverse mirror's trigger (`mirror/reverse/capture.rs`) skips this session's writes, and
/// a startup option is the session default, so the batches' `RESET ALL` keeps it.
fn forward_origin(config: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut config = config.clone();
    let origin = "-c pgbridge.origin=forward";
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {origin}"),
        _ => origin.to_string(),
    };
    config.options(&options);
    config
}

/// Why the applier lost its secondary connection (it connects again after a backoff).
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectionError {
    #[error("cannot reach the secondary: {}", crate::net::error_text(.0))]
    Connect(#[source] tokio_postgres::Error),
    /// A batch failed in a way that needs a new connection (the classified message).
    #[error("{0}")]
    Lost(String),
    /// Skipping a parked transaction could not record the position.
    #[error("cannot record the position: {}", crate::net::error_text(.0))]
    Position(#[source] tokio_postgres::Error),
}

impl Applier {
    /// The task's body: applies forever, connecting again whenever the secondary is lost.
    pub(super) async fn run(mut self) {
        let mut backoff = self.cfg.min_backoff;
        loop {
            let result = match self.connect().await {
                Ok(client) => {
                    self.stats.connected.store(true, Ordering::Relaxed);
                    self.statements.clear();
                    self.settings = None;
                    self.apply_loop(&client, &mut backoff).await
                }
                Err(e) => Err(ConnectionError::Connect(e)),
            };
            match result {
                Ok(()) => return,
                Err(e) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    self.retry_later(&mut backoff, e).await;
                }
            }
        }
    }

    async fn retry_later(&self, backoff: &mut Duration, error: impl Display) {
        let message = error.to_string();
        warn!(error = %message, retry_in = ?*backoff, "mirror applier retrying");
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pgbridge_mirror_retries_total").increment(1);
        self.stats.set_error(Some(message));
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(self.cfg.max_backoff);
    }

    /// Connects, makes sure the position table exists, and reads the position.
    async fn connect(&mut self) -> Result<Client, tokio_postgres::Error> {
        let url = &self.cfg.secondary;
        let (client, conn) =
            crate::net::tls::connect(&forward_origin(url.pg_config()), url.tls()).await?;
        let conn = async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "secondary connection ended");
            }
        };
        tokio::spawn(conn.in_current_span());
        client
            .batch_execute(&crate::mirror::under_schema_lock(&format!(
                "{SCHEMA_SQL}; {}",
                super::order::SCHEMA_SQL
            )))
            .await?;
        let row = client
            .query_opt(READ_POSITION_SQL, &[&self.journal.uuid()])
            .await?;
        let pos = row.map_or(0, |r| r.get::<_, i64>(0) as u64);
        let pos = pos.max(*self.applied.borrow());
        info!(journal = %self.journal.uuid(), position = pos, "mirror applier connected to the secondary");
        self.advance(pos);
        Ok(client)
    }

    /// Everything up to `pos` is applied (or skipped): the journal may forget it, and sync-mode
    /// waiters wake.
    pub(super) fn advance(&self, pos: u64) {
        self.journal.set_applied(pos);
        self.stats.applied_seq.store(pos, Ordering::Relaxed);
        self.applied.send_if_modified(|v| {
            let changed = *v < pos;
            *v = (*v).max(pos);
            changed
        });
    }

    /// Applies until the connection fails.
    async fn apply_loop(
        &mut self,
        client: &Client,
        backoff: &mut Duration,
    ) -> Result<(), ConnectionError> {
        let mut changes = self.journal.subscribe();
        let mut limit = self.cfg.batch;
        loop {
            self.chunk_if_due(client).await;
            let Some(mut ready) = self.ready(&mut changes, limit).await else {
                continue;
            };
            // A backfill chunk waits for the intents up to its point, and goes before the rest.
            if let Some(point) = self.chunk_point() {
                ready.retain(|r| r.id <= point);
                if ready.is_empty() {
                    continue;
                }
            }
            // Aborted intents ahead are skipped without a secondary transaction.
            let skip = ready.iter().take_while(|r| !r.committed).count();
            if skip > 0 {
                self.advance(ready[skip - 1].id);
                continue;
            }
            let txns = self.read_batch(client, &ready).await?;
            let Some(&(last, _)) = txns.last() else {
                continue;
            };
            limit = match self.apply_batch(client, &txns).await {
                Ok(()) => {
                    self.note_written(client, &txns).await;
                    self.batch_applied(&txns, last);
                    *backoff = self.cfg.min_backoff;
                    self.cfg.batch
                }
                Err(e) => self.batch_failed(client, backoff, &txns, limit, e).await?,
            };
        }
    }

    /// The ready intents after the applied position, up to `limit`; when fewer, it lingers
    /// for more (`apply_linger_ms`). `None` when none were ready (after waiting a while for a
    /// journal change).
    async fn ready(
        &mut self,
        changes: &mut watch::Receiver<u64>,
        limit: usize,
    ) -> Option<Vec<Ready>> {
        changes.borrow_and_update();
        let pos = *self.applied.borrow();
        let mut ready = self.journal.ready_batch(pos, limit);
        if ready.is_empty() {
            // Nothing ready: wait for an intent or outcome, a backfill chunk (or a second, to
            // stay alive).
            if self.chunk_point().is_none_or(|p| p > pos) {
                let notify = self.chunks.notify.clone();
                let wake = async {
                    tokio::select! {
                        _ = changes.changed() => {}
                        _ = notify.notified() => {}
                    }
                };
                let _ = tokio::time::timeout(IDLE_WAIT, wake).await;
            }
            return None;
        }
        if ready.len() < limit && !self.cfg.linger.is_zero() {
            // Let more commits join this batch: a secondary transaction per journal
            // transaction costs both sides several times what one per batch does.
            let until = tokio::time::Instant::now() + self.cfg.linger;
            while ready.len() < limit
                && matches!(
                    tokio::time::timeout_at(until, changes.changed()).await,
                    Ok(Ok(()))
                )
            {
                changes.borrow_and_update();
                ready = self.journal.ready_batch(pos, limit);
            }
        }
        Some(ready)
    }

    /// The transactions of `ready` read back from the journal, as many as share the first
    /// one's session settings (one settings context per secondary transaction). An unreadable
    /// intent ends the batch before it; first in line, it is parked.
    async fn read_batch(
        &mut self,
        client: &Client,
        ready: &[Ready],
    ) -> Result<Vec<(u64, Option<TxnRecord>)>, ConnectionError> {
        let mut txns: Vec<(u64, Option<TxnRecord>)> = Vec::with_capacity(ready.len());
        for r in ready {
            if !r.committed {
                txns.push((r.id, None));
                continue;
            }
            match self.journal.read(r.id) {
                Ok(t) => {
                    let same = txns
                        .iter()
                        .find_map(|(_, t)| t.as_ref())
                        .is_none_or(|first| first.settings == t.settings);
                    if !same {
                        break;
                    }
                    txns.push((r.id, Some(t)));
                }
                Err(e) => {
                    if txns.is_empty() {
                        error!(id = r.id, error = %e, "unreadable journal intent");
                        self.park_unreadable(client, r.id, &e.to_string()).await?;
                    }
                    break;
                }
            }
        }
        Ok(txns)
    }

    /// A batch committed on the secondary, up to intent `last`.
    fn batch_applied(&mut self, txns: &Txns, last: u64) {
        let applied = txns.iter().filter(|(_, t)| t.is_some()).count() as u64;
        self.stats
            .applied_txns
            .fetch_add(applied, Ordering::Relaxed);
        metrics::counter!("pgbridge_mirror_applied_total").increment(applied);
        if let Some(id) = self.parked_here.take() {
            self.unparked(id);
        }
        self.advance(last);
        self.stats.set_error(None);
    }

    /// After a failed batch: retries it (transient), or shrinks it to the transactions before
    /// the refused one, or parks the refused one when it is first. Returns the next batch's
    /// size limit (`limit` is this one's).
    async fn batch_failed(
        &mut self,
        client: &Client,
        backoff: &mut Duration,
        txns: &Txns,
        limit: usize,
        error: ApplyError,
    ) -> Result<usize, ConnectionError> {
        match error {
            ApplyError::Transient { message, reconnect } => {
                if reconnect {
                    return Err(ConnectionError::Lost(message));
                }
                self.retry_later(backoff, message).await;
                Ok(limit)
            }
            // Apply the ones before it first, then it alone.
            ApplyError::Permanent(refusal) if refusal.txn > 0 => Ok(refusal.txn),
            ApplyError::Permanent(refusal) => {
                let (id, record) = &txns[0];
                let session = record.as_ref().map(|t| t.session);
                self.park(client, *id, session, *refusal).await?;
                Ok(self.cfg.batch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::forward_origin;

    #[test]
    fn the_forward_sessions_carry_their_origin_after_the_urls_own_options() {
        let plain: tokio_postgres::Config = "host=db user=u".parse().unwrap();
        let config = forward_origin(&plain);
        assert_eq!(config.get_options(), Some("-c pgbridge.origin=forward"));
        let tuned: tokio_postgres::Config =
            "host=db user=u options='-c work_mem=64MB'".parse().unwrap();
        let config = forward_origin(&tuned);
        assert_eq!(
            config.get_options(),
            Some("-c work_mem=64MB -c pgbridge.origin=forward")
        );
    }
}
