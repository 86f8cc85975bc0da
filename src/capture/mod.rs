//! Capturing committed writes to migrated tables, inside a session (DESIGN.md, principles 5–7).
//!
//! A session with rules runs its requests through a [`drive::Driver`] and its replies through a
//! [`track::Tracker`]: writes to a migrated table go to the primary with RETURNING spliced in,
//! the returned row images are stripped from the client's reply and buffered per transaction
//! ([`txn::TxnBuffer`], savepoints honoured), and a transaction's changes are appended to the
//! journal before its COMMIT reaches the primary; the COMMIT's outcome follows.
//!
//! - [`rows`]: a captured row as a change.
//! - [`txn`]: the open transaction's changes.
//! - [`track`]: replies matched to requests.
//! - [`drive`]: requests, as the capture needs them sent.

pub mod drive;
pub mod expect;
pub mod reply;
pub mod rows;
pub mod secondary;
pub mod track;
pub mod txn;

pub use drive::Driver;
pub use reply::{Replies, Served};

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::mirror::Journal;
use track::Tracker;

/// The capture state of one session, shared by its two directions.
pub struct Shared {
    pub tracker: Mutex<Tracker>,
    /// Signalled by the reply side whenever a reply completed.
    pub progress: Notify,
    /// Signalled when replies the secondary gave were queued for the client.
    pub served: Notify,
}

impl Shared {
    pub fn new(journal: Option<Arc<Journal>>, sync: bool) -> Shared {
        Shared {
            tracker: Mutex::new(Tracker::new(journal, sync)),
            progress: Notify::new(),
            served: Notify::new(),
        }
    }

    /// Shadow reads go to `shadow`, recorded for session `session`.
    pub fn with_shadow(
        self,
        shadow: Option<Arc<crate::reads::shadow::Shadow>>,
        session: u64,
    ) -> Shared {
        {
            let mut t = self.lock();
            t.shadow = shadow;
            t.session = session;
        }
        self
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }
}
