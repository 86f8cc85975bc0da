//! One batch: consecutive journal transactions applied in one secondary transaction together
//! with the journal position. BEGIN, the session settings, every change, the position and COMMIT
//! go through the pipeline ([`super::pipeline`]); each change goes to the file of its kind.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::order::{Side, Skips};
use super::plan::Target;
use super::task::Txns;
use super::{Applier, ApplyError};
use crate::mirror::compare::WriteCheck;
use crate::mirror::{ChangeOp, TxnRecord, Value};
use crate::rules::TableName;

/// Records the journal position on the secondary, in the batch's transaction.
pub(super) const POSITION_SQL: &str = "INSERT INTO pgbridge.applied (journal, id, applied_at) \
    VALUES ($1, $2, now()) ON CONFLICT (journal) DO UPDATE SET id = EXCLUDED.id, applied_at = EXCLUDED.applied_at";

impl Applier {
    /// Applies a batch of whole transactions in one secondary transaction with the position.
    ///
    /// BEGIN, the settings, the changes, the position and COMMIT all go through the pipeline:
    /// a batch without a `where` check costs one round trip. Answers are taken in order and the
    /// first error is the cause, so a COMMIT that ran after a failed statement (and rolled back)
    /// is never taken for a commit.
    pub(super) async fn apply_batch(
        &mut self,
        client: &Client,
        txns: &Txns,
    ) -> Result<(), ApplyError> {
        self.pending.clear();
        self.pipeline.clear();
        self.checks.clear();
        self.carried = None;
        let settings = txns
            .iter()
            .find_map(|(_, t)| t.as_ref())
            .map(|t| t.settings.clone());
        let result = self.apply_in_txn(client, txns, settings.as_deref()).await;
        match result {
            Ok(()) => {
                if let Some(settings) = settings {
                    self.settings = Some(settings);
                }
                for d in self.pending.drain(..) {
                    self.recorder.record(d);
                }
                Ok(())
            }
            Err(e) => {
                self.pipeline.clear();
                // Settings set in the failed transaction are undone with it.
                self.settings = None;
                let _ = client.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    }

    async fn apply_in_txn(
        &mut self,
        client: &Client,
        txns: &Txns,
        settings: Option<&[(String, String)]>,
    ) -> Result<(), ApplyError> {
        self.txn = 0;
        self.control(client, "BEGIN", &[]).await?;
        if let Some(settings) = settings {
            self.queue_settings(client, settings).await?;
        }
        let skips = self.newer_elsewhere(client, txns).await?;
        let mut last = 0;
        for (i, (id, txn)) in txns.iter().enumerate() {
            last = *id;
            self.txn = i;
            let session = txn.as_ref().map_or(0, |t| t.session);
            let check = WriteCheck::new(*id, session, self.recorder.redact());
            self.checks.push(check);
            if let Some(txn) = txn {
                self.apply_txn(client, txn, i, &skips).await?;
            }
        }
        // An error at COMMIT (a deferred constraint) names the batch's last transaction, so the
        // batch shrinks until the one that fails is alone.
        let journal = Value::text(Type::TEXT.oid(), self.journal.uuid());
        let position = Value::text(Type::INT8.oid(), &last.to_string());
        self.control(client, POSITION_SQL, &[&journal, &position])
            .await?;
        self.control(client, "COMMIT", &[]).await?;
        self.flush(client).await?;
        for check in self.checks.drain(..) {
            self.pending.extend(check.divergences());
        }
        Ok(())
    }

    /// Sets the batch's session settings, at session level so the next batches with the same
    /// settings skip this; nothing when they are in force already.
    pub(super) async fn queue_settings(
        &mut self,
        client: &Client,
        settings: &[(String, String)],
    ) -> Result<(), ApplyError> {
        if self.settings.as_deref() == Some(settings) {
            return Ok(());
        }
        self.control(client, "RESET ALL", &[]).await?;
        if settings.is_empty() {
            return Ok(());
        }
        let (sql, values) = set_config(settings);
        let refs: Vec<&Value> = values.iter().collect();
        self.control(client, &sql, &refs).await
    }

    /// Queues one journal transaction's changes (the `i`th of the batch), without the keys
    /// `skips` names ([`super::order`]).
    async fn apply_txn(
        &mut self,
        client: &Client,
        txn: &TxnRecord,
        i: usize,
        skips: &Skips,
    ) -> Result<(), ApplyError> {
        for (k, change) in txn.changes.iter().enumerate() {
            let newer = |side| skips.contains(&(i, k, side));
            let newer = (newer(Side::Row), newer(Side::OldKey));
            if newer != (false, false) {
                // What an upsert left out carried is not for the next row.
                self.carried = None;
            }
            if newer.0 && !matches!(change.op, ChangeOp::UpdateKey { .. }) {
                continue;
            }
            if self.superseded(change, txn.changes.get(k + 1)) {
                // What the primary did first is what the row's one upsert must match.
                if let ChangeOp::Upsert { effect, .. } = &change.op {
                    self.carried.get_or_insert(*effect);
                }
                continue;
            }
            // Errors name their transaction (a queued statement's may be an earlier one's).
            self.apply_change(client, &change.table, &change.op, newer)
                .await?;
        }
        Ok(())
    }

    /// Queues one change through the live rule of its table (none any more: skipped). `newer`
    /// says which of an UPDATE of a key's two keys an instance wrote later ([`super::order`]):
    /// what it does to the other one is still done.
    async fn apply_change(
        &mut self,
        client: &Client,
        table: &TableName,
        op: &ChangeOp,
        newer: (bool, bool),
    ) -> Result<(), ApplyError> {
        if let ChangeOp::Statement { sql, params, tag } = op {
            return self.replay(client, table, sql, params, tag.as_ref()).await;
        }
        let Some((rule, plan)) = self.live_plan(table)? else {
            return Ok(());
        };
        let t = Target {
            table,
            rule: &rule,
            plan: &plan,
        };
        match op {
            // Replayed above, without the row plan.
            ChangeOp::Statement { .. } => Ok(()),
            ChangeOp::Truncate => self.truncate(client, t).await,
            ChangeOp::Delete { key, in_filter } => self.delete(client, t, key, *in_filter).await,
            ChangeOp::Upsert {
                row,
                in_filter: f,
                effect,
            } => self.upsert_row(client, t, row, *f, *effect).await,
            ChangeOp::UpdateKey {
                old_key,
                row,
                in_filter: f,
            } => match newer {
                (false, false) => self.update_key(client, t, old_key, row, *f).await,
                (true, false) => self.delete(client, t, old_key, Some(true)).await,
                (false, true) => self.upsert(client, t, row, *f, None).await,
                (true, true) => Ok(()),
            },
        }
    }
}

/// `SELECT set_config($1, $2, false), ...`: the settings as parameters, at session level.
fn set_config(settings: &[(String, String)]) -> (String, Vec<Value>) {
    let values = settings
        .iter()
        .flat_map(|(k, v)| [k, v])
        .map(|s| Value::text(Type::TEXT.oid(), s))
        .collect();
    (crate::sql::injected::set_config(settings.len()), values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_set_with_parameters() {
        let settings = [
            ("DateStyle".to_string(), "ISO, MDY".to_string()),
            ("TimeZone".to_string(), "UTC".to_string()),
        ];
        let (sql, values) = set_config(&settings);
        assert_eq!(
            sql,
            "SELECT set_config($1, $2, false), set_config($3, $4, false)"
        );
        assert_eq!(values[1], Value::text(25, "ISO, MDY"));
        assert_eq!(values.len(), 4);
    }
}
