//! Making a transaction's changes durable before its COMMIT reaches the primary
//! (docs/DESIGN.md, principle 7): its id from the primary, then the journal intent; or, when
//! the journal cannot take it, the transaction rolled back with pgbridge's reason.

use std::collections::VecDeque;

use tokio::io::AsyncWrite;

use super::super::expect::{Expect, Step};
use super::{rolled_back, Driver, REFUSED, TEXT_SETTINGS};
use crate::mirror::TxnRecord;
use crate::protocol::messages::{error_response, Severity};
use crate::protocol::wire;
use crate::sql::injected;

pub(super) enum Journaled {
    Nothing,
    Intent(u64),
    Refused(String),
}

impl<'a> Driver<'a> {
    /// The journal could not take the transaction: roll it back and tell the client.
    pub(super) fn refuse_commit(&mut self, message: &str) -> std::io::Result<()> {
        let mut t = self.shared.lock();
        t.txn.clear();
        t.before_ready.push(error_response(
            Severity::Error,
            REFUSED,
            &rolled_back(message),
        ));
        t.expect(Expect::Query {
            steps: VecDeque::from([Step::Swallow]),
            hold: false,
        });
        drop(t);
        self.out.extend_from_slice(&wire::query(injected::ROLLBACK));
        Ok(())
    }

    /// For an open transaction with changes: its id from the primary, then the durable intent.
    pub(super) async fn journal_open_transaction<W: AsyncWrite + Unpin>(
        &mut self,
        primary: &mut W,
    ) -> std::io::Result<Journaled> {
        let (status, empty) = {
            let t = self.shared.lock();
            (t.status, t.txn.is_empty())
        };
        if status != b'T' || empty {
            return Ok(Journaled::Nothing);
        }
        if self.shared.lock().xid.is_none() {
            self.held_query(injected::XID, vec![Step::Xid], primary)
                .await?;
        }
        Ok(match self.intent().await {
            Ok(id) => Journaled::Intent(id),
            Err(m) => Journaled::Refused(m),
        })
    }

    /// Appends the open transaction's changes to the journal (durably); its intent id.
    pub(super) async fn intent(&mut self) -> Result<u64, String> {
        let record = {
            let mut t = self.shared.lock();
            let mut record = TxnRecord::new(self.session, t.xid.take());
            record.lsn = t.lsn.take();
            record.changes = t.txn.changes().to_vec();
            if t.other_write {
                let mut tables: Vec<String> =
                    record.changes.iter().map(|c| c.table.to_string()).collect();
                tables.sort();
                tables.dedup();
                tables
                    .iter()
                    .for_each(|table| crate::writes::mixed::note(table));
            }
            record.settings = TEXT_SETTINGS
                .iter()
                .filter_map(|k| t.settings.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
            record
        };
        let Some(journal) = self.journal else {
            // No secondary configured: nothing to mirror to.
            self.shared.lock().txn.clear();
            return Err("no [secondary] is configured to mirror to".into());
        };
        journal
            .append_intent(&record)
            .await
            .map_err(|e| e.to_string())
    }

    /// The id and intent of the open transaction, in the extended protocol.
    pub(super) async fn extended_intent<W: AsyncWrite + Unpin>(
        &mut self,
        primary: &mut W,
    ) -> std::io::Result<Result<u64, String>> {
        self.xid_asked = false;
        if self.shared.lock().xid.is_none() {
            self.inject("pgbridge_xid", injected::XID, Step::Xid, false);
            self.drain_extended(primary).await?;
        }
        Ok(self.intent().await)
    }
}
