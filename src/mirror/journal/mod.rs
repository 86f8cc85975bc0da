//! The journal: committed transactions on disk until the secondary has them (docs/DESIGN.md,
//! principle 7).
//!
//! Append-only segment files `<base id>.seg` in `journal_dir`, each starting with a magic line and
//! holding framed, checksummed records ([`format`]). Two kinds:
//!
//! - *Intent* `{id, txn}`: written and fsynced before the session sends COMMIT to the primary.
//!   Ids are assigned by the writer in the order records reach the file, 1, 2, 3, ...
//! - *Outcome* `{id, committed}`: known in memory once the primary answered, and written with
//!   the next intents (or within [`writer::OUTCOME_DELAY`] when none come); never waited for: a
//!   lost outcome makes its intent in doubt, resolved by [`super::resolve`].
//!
//! One writer thread ([`writer`]) takes whatever is queued, writes it in one `pwrite`, and fsyncs
//! once for all of it (group commit), with zeroed space written ahead of the records so an
//! fsync writes no file size. On open ([`disk`]) every segment is scanned and checked: its
//! records end at the first frame that does not parse; zeros after it are preallocated space,
//! anything else is a torn or corrupt tail and is cut. What the journal knows in memory is
//! [`state`]; what sessions, the resolver and the applier call is [`queue`].
//! Segments whose intents are all applied are removed, except the newest, which keeps the id
//! sequence going across restarts (a reused id would be skipped by the secondary's position).

mod disk;
mod format;
mod queue;
mod state;
mod writer;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::watch;
use tracing::info;

use crate::config::{MirrorConfig, OnFull};
use state::State;
pub use state::{InDoubt, Ready};
use writer::{Message, Writer};

/// Why the journal could not take or give a record.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Above `max_journal_bytes` with `on_full = "refuse"`.
    #[error("the mirror journal is full ({bytes} bytes, limit {max}): writes to migrated tables are refused until the secondary catches up")]
    Full { bytes: u64, max: u64 },
    /// The disk is full with `on_full = "refuse"`.
    #[error("no space left for the mirror journal: writes to migrated tables are refused")]
    NoSpace,
    #[error("the journal directory {0} is in use by another pgbridge process")]
    Locked(PathBuf),
    #[error("journal record {id} is unreadable: {reason}")]
    Corrupt { id: u64, reason: String },
    #[error("the journal writer has stopped")]
    Closed,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a journal is opened (from `[mirror]`).
#[derive(Debug, Clone)]
pub struct JournalOptions {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub max_bytes: u64,
    pub on_full: OnFull,
}

impl JournalOptions {
    pub fn from_config(c: &MirrorConfig) -> JournalOptions {
        JournalOptions {
            dir: c.journal_dir.clone(),
            segment_bytes: c.segment_bytes,
            max_bytes: c.max_journal_bytes,
            on_full: c.on_full,
        }
    }

    /// Defaults for a directory (tests, benches).
    pub fn new(dir: impl Into<PathBuf>) -> JournalOptions {
        JournalOptions::from_config(&MirrorConfig {
            journal_dir: dir.into(),
            ..MirrorConfig::default()
        })
    }
}

/// Counters of the journal, for status and the group-commit measurements.
#[derive(Debug, Default)]
pub struct JournalCounters {
    pub appends: AtomicU64,
    pub fsyncs: AtomicU64,
    pub cut_tails: AtomicU64,
    /// Above `max_journal_bytes` right now.
    pub full: AtomicBool,
    /// The last write failed with ENOSPC (cleared by the next successful write).
    pub no_space: AtomicBool,
}

/// The journal of one pgbridge: open it once and share the `Arc`.
pub struct Journal {
    opts: JournalOptions,
    uuid: String,
    state: Mutex<State>,
    tx: Mutex<Option<mpsc::Sender<Message>>>,
    /// Bumped on every change the applier or a waiting writer may care about.
    changed: watch::Sender<u64>,
    readers: Mutex<HashMap<u64, Arc<File>>>,
    pub counters: JournalCounters,
    /// Joined on drop, so the journal is on disk whole before its directory lock goes.
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    _lock: File,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.opts.dir)
            .field("uuid", &self.uuid)
            .finish()
    }
}

impl Journal {
    /// Opens (or creates) the journal: scans and checks every segment, cuts a torn tail, and
    /// starts the writer thread.
    pub fn open(opts: JournalOptions) -> Result<Arc<Journal>, JournalError> {
        let dir = opts.dir.clone();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock = disk::lock_dir(&dir)?;
        let uuid = disk::journal_uuid(&dir)?;
        let counters = JournalCounters::default();
        let mut state = State::default();
        let tip = disk::recover(&opts, &mut state, &counters)?;
        log_opened(&dir, &uuid, &state);
        let file = OpenOptions::new()
            .write(true)
            .open(disk::segment_path(&dir, tip.base))
            .map_err(io_err(&dir))?;
        let (tx, rx) = mpsc::channel();
        let (changed, _) = watch::channel(0);
        let journal = Arc::new(Journal {
            opts,
            uuid,
            state: Mutex::new(state),
            tx: Mutex::new(Some(tx)),
            changed,
            readers: Mutex::new(HashMap::new()),
            counters,
            writer: Mutex::new(None),
            _lock: lock,
        });
        let chunk = writer::prealloc_chunk(&journal.opts);
        let writer = Writer::new(Arc::downgrade(&journal), file, tip, chunk);
        let handle = std::thread::Builder::new()
            .name("pgbridge-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(&dir))?;
        *journal.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(journal)
    }

    /// Identifies this journal on the secondary (`pgbridge.applied.journal`).
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// Stops the writer after what is queued; later appends fail with [`JournalError::Closed`].
    pub fn close(&self) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = tx {
            // The writer may not reach the state any more: it gets them with the last message.
            let outcomes = std::mem::take(&mut self.lock().unwritten);
            if !outcomes.is_empty() {
                let _ = tx.send(Message::Outcomes(outcomes));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes whoever subscribed (see [`Journal::subscribe`]).
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        // The writer itself may hold the last reference (in its upkeep): it ends on its own.
        if let Some(h) = handle.filter(|h| h.thread().id() != std::thread::current().id()) {
            let _ = h.join();
        }
    }
}

fn log_opened(dir: &Path, uuid: &str, state: &State) {
    let in_doubt = state
        .intents
        .values()
        .filter(|m| m.outcome.is_none())
        .count();
    info!(
        dir = %dir.display(),
        journal = %uuid,
        segments = state.segments.len(),
        pending = state.intents.len(),
        in_doubt,
        last_id = state.last_id,
        "journal opened"
    );
}
