//! The capture's side of the primary-to-client direction: each reply frame the tracker wants to
//! see goes through [`Replies::on_frame`], which says what to do with it and hands over the
//! replies the secondary gave that are due right after it; the divergences the tracker noted
//! are recorded here, off the tracker's lock.

use std::time::Duration;

use bytes::BytesMut;

use super::expect::Action;
use super::Shared;
use crate::divergence::{Divergence, Kind, Recorder};
use crate::mirror::ApplierHandle;

/// Replies the secondary gave, due to the client now, and how many requests they answer
/// (ReadyForQuery frames pgbridge wrote for Syncs it answered itself).
pub struct Served {
    pub bytes: BytesMut,
    pub readies: usize,
}

/// The capture of a session with rules, as the reply direction needs it.
pub struct Replies<'a> {
    pub shared: &'a Shared,
    pub recorder: &'a Recorder,
    pub applier: Option<&'a ApplierHandle>,
    pub sync_timeout: Duration,
    pub session: u64,
}

impl Replies<'_> {
    /// Whether a reply frame of type `tag` must be seen whole (decided from its header).
    pub fn wants(&self, tag: u8) -> bool {
        self.shared.lock().wants(tag)
    }

    /// The frame's action, and the secondary's replies due right after it.
    pub fn on_frame(&self, frame: &[u8]) -> (Action, Option<Served>) {
        let (action, lost, records, served) = {
            let mut t = self.shared.lock();
            let action = t.on_frame(frame);
            let lost = std::mem::take(&mut t.lost);
            (
                action,
                lost,
                std::mem::take(&mut t.records),
                t.take_served(),
            )
        };
        for d in records {
            self.recorder.record(d);
        }
        self.shared.progress.notify_one();
        if lost > 0 {
            self.record_lost(lost);
        }
        (
            action,
            served.map(|(bytes, readies)| Served { bytes, readies }),
        )
    }

    /// The secondary's replies now due, when no reply of the primary's is there to carry them.
    pub fn take_served(&self) -> Option<Served> {
        let (bytes, readies) = self.shared.lock().take_served()?;
        self.shared.progress.notify_one();
        Some(Served { bytes, readies })
    }

    /// Resolves when replies the secondary gave were queued for the client. Cancel safe.
    pub async fn served_queued(&self) {
        self.shared.served.notified().await
    }

    /// Sync mode: the client's COMMIT reply waits until the secondary applied it, or the timeout.
    pub async fn wait_applied(&self, id: u64) {
        let Some(applier) = self.applier else { return };
        if let Err(e) = applier.wait_applied(id, self.sync_timeout).await {
            let mut d = Divergence::new(Kind::SyncTimeout, "");
            d.secondary = e.to_string();
            d.detail = serde_json::json!({ "journal_id": id });
            d.session = Some(self.session);
            self.recorder.record(d);
        }
    }

    /// A transaction ended without a COMMIT pgbridge could journal: its changes are lost to
    /// the mirror, and that is a divergence.
    fn record_lost(&self, changes: usize) {
        let mut d = Divergence::new(Kind::UnmirroredWrite, "");
        d.detail = serde_json::json!({
            "reason": "the transaction ended without a COMMIT pgbridge could journal",
            "changes": changes,
        });
        d.session = Some(self.session);
        self.recorder.record(d);
    }
}
