//! Carrying out each statement's plan inside a session (docs/DESIGN.md, principles 5 to 7).
//!
//! A session with rules runs its requests through a [`drive::Driver`] and its replies through a
//! [`track::Tracker`]: writes to a migrated table go to the primary with RETURNING spliced in,
//! the returned row images are stripped from the client's reply and buffered per transaction
//! ([`txn::TxnBuffer`], savepoints honoured), and a transaction's changes are appended to the
//! journal before its COMMIT reaches the primary; the COMMIT's outcome follows. Reads the
//! router sends to the secondary are held back and answered from there ([`secondary`]).
//!
//! - [`expect`]: what each request sent expects back, and what to do with a reply frame.
//! - [`drive`]: requests, as the capture needs them sent (simple and extended protocol).
//! - [`track`]: replies matched to requests.
//! - [`reply`]: the reply side, as the relay calls it.
//! - [`rows`]: a captured row as a change.
//! - [`txn`]: the open transaction's changes.
//! - [`settings`]: the session's own `SET`s, following its transactions.
//! - [`secondary`]: reads served by the secondary, the driver's half.

pub mod drive;
pub mod expect;
pub mod reply;
pub mod rows;
pub mod secondary;
pub mod settings;
pub mod track;
pub mod txn;

pub use drive::{Driver, WriteRouting};
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

/// Goes up whenever a session sends DDL through pgbridge: the row
/// descriptions sessions keep (of the primary's answers to reads the secondary serves) are
/// asked for again.
static SCHEMA_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The schema epoch now ([`SCHEMA_EPOCH`]).
pub fn schema_epoch() -> u64 {
    SCHEMA_EPOCH.load(std::sync::atomic::Ordering::Relaxed)
}

/// A DDL statement was sent through pgbridge.
pub(crate) fn schema_changed() {
    SCHEMA_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}
