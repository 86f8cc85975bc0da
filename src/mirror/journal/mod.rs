//! The journal: committed transactions on disk until the secondary has them (DESIGN.md,
//! principle 7).
//!
//! Append-only segment files `<base id>.seg` in `journal_dir`, each starting with a magic line and
//! holding framed records: `len u32 | crc32c u32 | kind u8 | id u64 | payload`, `len` counting
//! from `kind`, the checksum covering the same bytes. Two kinds:
//!
//! - *Intent* `{id, txn}`: written and fsynced before the session sends COMMIT to the primary.
//!   Ids are assigned by the writer in the order records reach the file, 1, 2, 3, ...
//! - *Outcome* `{id, committed}`: known in memory once the primary answered, and written with
//!   the next intents (or within [`OUTCOME_DELAY`] when none come); never waited for: a lost
//!   outcome makes its intent in doubt, resolved by [`super::resolve`].
//!
//! One writer thread takes whatever is queued, writes it in one `pwrite`, and fsyncs once for all
//! of it (group commit). The writer keeps zeroed space written ahead of the end of the segment
//! ([`PREALLOC_CHUNK`]), so the fsync of an append writes data blocks only: no file size (inode)
//! to write with each one. On open every segment is scanned and checked: its records end at the
//! first frame that does not parse; zeros after it are preallocated space, anything else is a torn
//! or corrupt tail and is cut (an intent is only acknowledged after its fsync, so what is cut was
//! never acknowledged).
//! Segments whose intents are all applied are removed, except the newest, which keeps the id
//! sequence going across restarts (a reused id would be skipped by the secondary's position).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use super::{codec, TxnRecord};
use crate::config::{MirrorConfig, OnFull};

const MAGIC: &[u8; 8] = b"PGBJNL1\n";
const HEADER: usize = 4 + 4 + 1 + 8;
const KIND_INTENT: u8 = 1;
const KIND_OUTCOME: u8 = 2;
/// A record larger than this is taken for corruption when scanning.
const MAX_RECORD: usize = 1 << 30;
/// Zeroed space the writer keeps ahead of the end of a segment (at most the segment size).
const PREALLOC_CHUNK: u64 = 1 << 20;
/// Payloads of unapplied intents kept in memory, at most (beyond, the applier reads the file).
const CACHE_BYTES: usize = 32 << 20;
/// Outcomes wait at most this long for intents to be written with.
const OUTCOME_DELAY: Duration = Duration::from_millis(200);

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

/// Where an intent is, and what is known of it.
#[derive(Debug, Clone)]
struct IntentMeta {
    segment: u64,
    offset: u64,
    len: u32,
    xid: Option<i64>,
    captured_at_us: i64,
    outcome: Option<bool>,
    /// The payload as written, kept while [`CACHE_BYTES`] allows: the applier decodes it
    /// without reading the file back.
    cached: Option<Bytes>,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    /// By base id (the first id the segment may hold).
    segments: BTreeMap<u64, Segment>,
    /// Intents not yet applied (or skipped), by id.
    intents: BTreeMap<u64, IntentMeta>,
    total_bytes: u64,
    applied: u64,
    last_id: u64,
    /// Outcomes known but not yet written (the writer takes them with its next batch).
    unwritten: Vec<(u64, bool)>,
    /// Bytes of the payloads in [`IntentMeta::cached`].
    cached_bytes: usize,
}

/// An intent whose outcome the journal does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InDoubt {
    pub id: u64,
    pub xid: Option<i64>,
    pub captured_at_us: i64,
}

/// The next intent in id order whose outcome is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub id: u64,
    pub committed: bool,
    pub captured_at_us: i64,
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

/// What the writer thread is sent.
enum Message {
    Intent(Request),
    /// The outcomes not written yet, when the journal closes.
    Outcomes(Vec<(u64, bool)>),
}

/// An intent for the writer thread.
struct Request {
    payload: BytesMut,
    xid: Option<i64>,
    captured_at_us: i64,
    reply: oneshot::Sender<Result<u64, JournalError>>,
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
        let lock = lock_dir(&dir)?;
        let uuid = journal_uuid(&dir)?;
        let counters = JournalCounters::default();
        let mut state = State::default();
        let mut bases: Vec<u64> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse::<u64>().ok()
            })
            .collect();
        bases.sort_unstable();
        let mut allocated = 0;
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(&dir, base);
            let (bytes, file_len) =
                scan_segment(&path, base, &mut state, &counters, i + 1 == bases.len())?;
            state.total_bytes += bytes;
            state.segments.insert(base, Segment { path, bytes });
            state.last_id = state.last_id.max(base.saturating_sub(1));
            allocated = file_len;
        }
        let (base, seg_len) = match state.segments.iter().next_back() {
            Some((&b, s)) => (b, s.bytes),
            None => {
                let base = state.last_id + 1;
                let path = segment_path(&dir, base);
                let chunk = prealloc_chunk(&opts);
                create_segment(&path, chunk)?;
                allocated = chunk.max(MAGIC.len() as u64);
                sync_dir(&dir)?;
                state.total_bytes += MAGIC.len() as u64;
                state.segments.insert(
                    base,
                    Segment {
                        path,
                        bytes: MAGIC.len() as u64,
                    },
                );
                (base, MAGIC.len() as u64)
            }
        };
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
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(&dir, base))
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
        let writer = Writer {
            journal: Arc::downgrade(&journal),
            file,
            base,
            len: seg_len,
            allocated: allocated.max(seg_len),
            chunk: prealloc_chunk(&journal.opts),
            carried: Vec::new(),
        };
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

    /// Appends a transaction's intent; returns its id once it is on disk (fsynced, shared with
    /// the concurrent appends). Call it before sending COMMIT to the primary; an error means
    /// the transaction must not commit (roll it back and tell the client).
    ///
    /// Cancel safe in the sense that dropping the future never corrupts the journal; the
    /// intent may still be written, and then has no outcome until resolved.
    pub async fn append_intent(&self, txn: &TxnRecord) -> Result<u64, JournalError> {
        self.wait_for_space().await?;
        let mut payload = BytesMut::with_capacity(256);
        codec::encode(txn, &mut payload);
        let (reply, rx) = oneshot::channel();
        self.send(Message::Intent(Request {
            payload,
            xid: txn.xid,
            captured_at_us: txn.captured_at_us,
            reply,
        }))?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Records the primary's answer to the COMMIT of intent `id`. Known to the applier at once;
    /// written to disk with the next intents (at most [`OUTCOME_DELAY`] later), without waking
    /// the writer or waiting for it.
    pub fn append_outcome(&self, id: u64, committed: bool) -> Result<(), JournalError> {
        if self.tx.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            return Err(JournalError::Closed);
        }
        {
            let mut st = self.lock();
            match st.intents.get_mut(&id) {
                Some(m) if m.outcome.is_none() => m.outcome = Some(committed),
                // Already known (resolved twice) or already applied: nothing new.
                _ => return Ok(()),
            }
            st.unwritten.push((id, committed));
        }
        self.bump();
        Ok(())
    }

    /// Intents without an outcome, in id order.
    pub fn in_doubt(&self) -> Vec<InDoubt> {
        self.lock()
            .intents
            .iter()
            .filter(|(_, m)| m.outcome.is_none())
            .map(|(&id, m)| InDoubt {
                id,
                xid: m.xid,
                captured_at_us: m.captured_at_us,
            })
            .collect()
    }

    /// The first intent after `after`, if its outcome is known. `None` when there is none yet
    /// or its outcome is still unknown (the applier waits: journal order is commit order).
    pub fn next_ready(&self, after: u64) -> Option<Ready> {
        let st = self.lock();
        let (&id, m) = st.intents.range(after + 1..).next()?;
        Some(Ready {
            id,
            committed: m.outcome?,
            captured_at_us: m.captured_at_us,
        })
    }

    /// Up to `max` consecutive ready intents after `after`.
    pub fn ready_batch(&self, after: u64, max: usize) -> Vec<Ready> {
        let st = self.lock();
        st.intents
            .range(after + 1..)
            .take(max)
            .map_while(|(&id, m)| {
                Some(Ready {
                    id,
                    committed: m.outcome?,
                    captured_at_us: m.captured_at_us,
                })
            })
            .collect()
    }

    /// Reads an intent's transaction back from disk (checksum verified).
    pub fn read(&self, id: u64) -> Result<TxnRecord, JournalError> {
        let corrupt = |reason: &str| JournalError::Corrupt {
            id,
            reason: reason.into(),
        };
        let cached = self.lock().intents.get(&id).and_then(|m| m.cached.clone());
        if let Some(payload) = cached {
            return codec::decode(payload).map_err(|e| corrupt(e.0));
        }
        let buf = self.raw(id)?;
        let (kind, rid, payload) = parse_frame(&buf).ok_or_else(|| corrupt("checksum mismatch"))?;
        if kind != KIND_INTENT || rid != id {
            return Err(corrupt("not this intent"));
        }
        codec::decode(Bytes::copy_from_slice(payload)).map_err(|e| corrupt(e.0))
    }

    /// The raw frame of an intent, for parking it.
    pub fn raw(&self, id: u64) -> Result<Vec<u8>, JournalError> {
        let meta = self
            .lock()
            .intents
            .get(&id)
            .cloned()
            .ok_or(JournalError::Corrupt {
                id,
                reason: "not in the journal".into(),
            })?;
        let file = self.reader(meta.segment)?;
        let mut buf = vec![0u8; meta.len as usize];
        file.read_exact_at(&mut buf, meta.offset)
            .map_err(io_err(&segment_path(&self.opts.dir, meta.segment)))?;
        Ok(buf)
    }

    /// The applier is done with every intent up to `id` (applied, skipped or parked): forget
    /// them and remove the segments that hold nothing else.
    pub fn set_applied(&self, id: u64) {
        let mut removed = Vec::new();
        {
            let mut st = self.lock();
            if id <= st.applied {
                return;
            }
            st.applied = id;
            let rest = st.intents.split_off(&(id + 1));
            let done = std::mem::replace(&mut st.intents, rest);
            let freed: usize = done
                .values()
                .filter_map(|m| m.cached.as_ref())
                .map(Bytes::len)
                .sum();
            st.cached_bytes -= freed;
            let bases: Vec<u64> = st.segments.keys().copied().collect();
            for pair in bases.windows(2) {
                // Segment pair[0] holds ids below pair[1].
                if pair[1] - 1 <= id {
                    if let Some(seg) = st.segments.remove(&pair[0]) {
                        st.total_bytes -= seg.bytes;
                        removed.push((pair[0], seg.path));
                    }
                }
            }
        }
        for (base, path) in removed {
            self.readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&base);
            match fs::remove_file(&path) {
                Ok(()) => info!(segment = %path.display(), "applied journal segment removed"),
                Err(e) => {
                    warn!(segment = %path.display(), error = %e, "cannot remove an applied segment")
                }
            }
        }
        self.refresh_full();
        self.bump();
    }

    /// The last intent id assigned.
    pub fn last_id(&self) -> u64 {
        self.lock().last_id
    }

    /// Bytes of journal on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    /// How many segment files are on disk.
    pub fn segments(&self) -> usize {
        self.lock().segments.len()
    }

    /// Intents not yet applied, and the capture time of the oldest committed one.
    pub fn pending(&self) -> (u64, Option<i64>) {
        let st = self.lock();
        let oldest = st
            .intents
            .values()
            .filter(|m| m.outcome != Some(false))
            .map(|m| m.captured_at_us)
            .min();
        (st.intents.len() as u64, oldest)
    }

    /// Wakes on any change (new intent, outcome, applied position).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
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

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn send(&self, req: Message) -> Result<(), JournalError> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.as_ref()
            .ok_or(JournalError::Closed)?
            .send(req)
            .map_err(|_| JournalError::Closed)
    }

    fn reader(&self, segment: u64) -> Result<Arc<File>, JournalError> {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = readers.get(&segment) {
            return Ok(f.clone());
        }
        let path = segment_path(&self.opts.dir, segment);
        let f = Arc::new(File::open(&path).map_err(io_err(&path))?);
        readers.insert(segment, f.clone());
        Ok(f)
    }

    fn refresh_full(&self) -> bool {
        let bytes = self.bytes();
        let full = bytes > self.opts.max_bytes;
        let was = self.counters.full.swap(full, Ordering::Relaxed);
        if full && !was {
            error!(
                bytes,
                max = self.opts.max_bytes,
                "the mirror journal is full"
            );
        }
        full
    }

    /// Above `max_bytes`: wait for the applier (backpressure) or refuse.
    async fn wait_for_space(&self) -> Result<(), JournalError> {
        let mut rx = self.subscribe();
        loop {
            if !self.refresh_full() {
                return Ok(());
            }
            if self.opts.on_full == OnFull::Refuse {
                return Err(JournalError::Full {
                    bytes: self.bytes(),
                    max: self.opts.max_bytes,
                });
            }
            if rx.changed().await.is_err() {
                return Err(JournalError::Closed);
            }
        }
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

/// The writer thread: batches whatever is queued into one write and one fsync.
struct Writer {
    journal: std::sync::Weak<Journal>,
    file: File,
    base: u64,
    /// Where the next record goes (the end of the records).
    len: u64,
    /// The file's length: zeroed space from `len` up to here is written already.
    allocated: u64,
    /// How much zeroed space to write ahead at a time ([`prealloc_chunk`]).
    chunk: u64,
    /// Outcomes not written yet (of a failed batch, or handed over when the journal closed).
    carried: Vec<(u64, bool)>,
}

type Reply = (
    oneshot::Sender<Result<u64, JournalError>>,
    Result<u64, JournalError>,
);

/// An intent written in this batch: id, offset, frame length, xid, capture time.
type Written = (u64, u64, u32, Option<i64>, i64);

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        let mut buf = BytesMut::with_capacity(1 << 20);
        loop {
            let mut batch = Vec::new();
            match rx.recv_timeout(OUTCOME_DELAY) {
                Ok(Message::Intent(r)) => batch.push(r),
                Ok(Message::Outcomes(o)) => self.carried.extend(o),
                // Time to write the outcomes that came without intents.
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(Message::Intent(r)) => batch.push(r),
                    Ok(Message::Outcomes(o)) => self.carried.extend(o),
                    Err(_) => break,
                }
            }
            let Some(journal) = self.journal.upgrade() else {
                break;
            };
            let outcomes = std::mem::take(&mut journal.lock().unwritten);
            self.carried.extend(outcomes);
            if batch.is_empty() && self.carried.is_empty() {
                continue;
            }
            let replies = self.write_batch(&journal, batch, &mut buf);
            if self.len >= journal.opts.segment_bytes {
                if let Err(e) = self.rotate(&journal) {
                    error!(error = %e, "cannot start a new journal segment");
                }
            }
            // Let go of the journal before answering: the last owner may drop it right after
            // (and open it again, which needs its lock released).
            drop(journal);
            for (reply, result) in replies {
                let _ = reply.send(result);
            }
            // After the answers, so no waiting COMMIT pays for it.
            if self.allocated < self.len + self.chunk / 2 {
                self.extend(self.chunk);
            }
        }
        self.write_carried();
    }

    /// Writes `chunk` zeroed bytes past the end of the file and syncs them (size included), so
    /// that appends there change no metadata. Best effort: appends past the end work anyway.
    fn extend(&mut self, chunk: u64) {
        let zeros = vec![0u8; chunk as usize];
        let result = self
            .file
            .write_all_at(&zeros, self.allocated)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => self.allocated += chunk,
            Err(e) => {
                warn!(error = %e, "cannot preallocate journal space");
                // Whatever part was written is zeros past the records: harmless.
                if let Ok(m) = self.file.metadata() {
                    self.allocated = m.len();
                }
            }
        }
    }

    /// The last outcomes, when the journal has closed (no state to update any more).
    fn write_carried(&mut self) {
        if self.carried.is_empty() {
            return;
        }
        let mut buf = BytesMut::new();
        for (id, committed) in self.carried.drain(..) {
            frame(&mut buf, KIND_OUTCOME, id, &[committed as u8]);
        }
        if let Err(e) = self
            .file
            .write_all_at(&buf, self.len)
            .and_then(|()| self.file.sync_data())
        {
            warn!(error = %e, "cannot write the last outcomes: their intents will be resolved on restart");
        }
    }

    fn write_batch(
        &mut self,
        journal: &Journal,
        batch: Vec<Request>,
        buf: &mut BytesMut,
    ) -> Vec<Reply> {
        loop {
            buf.clear();
            let mut next_id = journal.lock().last_id;
            let mut pending = Vec::new();
            let outcomes = std::mem::take(&mut self.carried);
            for (id, committed) in &outcomes {
                frame(buf, KIND_OUTCOME, *id, &[*committed as u8]);
            }
            for req in &batch {
                next_id += 1;
                let offset = self.len + buf.len() as u64;
                frame(buf, KIND_INTENT, next_id, &req.payload);
                pending.push((
                    next_id,
                    offset,
                    (self.len + buf.len() as u64 - offset) as u32,
                    req.xid,
                    req.captured_at_us,
                ));
            }
            let result = self.file.write_all_at(buf, self.len).and_then(|()| {
                if batch.is_empty() {
                    Ok(())
                } else {
                    journal.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                    self.file.sync_data()
                }
            });
            match result {
                Ok(()) => {
                    journal.counters.no_space.store(false, Ordering::Relaxed);
                    self.len += buf.len() as u64;
                    self.allocated = self.allocated.max(self.len);
                    return self.commit(journal, batch, pending, buf.len() as u64);
                }
                Err(e) => {
                    // Cut whatever part of the batch reached the file (the zeroed space ahead
                    // goes with it; upkeep writes it again).
                    let _ = self.file.set_len(self.len);
                    self.allocated = self.len;
                    let no_space = e.raw_os_error() == Some(libc::ENOSPC);
                    journal.counters.no_space.store(no_space, Ordering::Relaxed);
                    error!(error = %e, no_space, "journal write failed");
                    self.carried = outcomes;
                    if no_space && journal.opts.on_full == OnFull::Backpressure {
                        // Writers wait; retry until space comes back.
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    let mut replies = Vec::new();
                    for req in batch {
                        let err = if no_space {
                            JournalError::NoSpace
                        } else {
                            JournalError::Io {
                                path: segment_path(&journal.opts.dir, self.base),
                                source: io::Error::new(e.kind(), e.to_string()),
                            }
                        };
                        replies.push((req.reply, Err(err)));
                    }
                    return replies;
                }
            }
        }
    }

    fn commit(
        &mut self,
        journal: &Journal,
        batch: Vec<Request>,
        pending: Vec<Written>,
        written: u64,
    ) -> Vec<Reply> {
        let mut replies = Vec::new();
        {
            let mut st = journal.lock();
            st.total_bytes += written;
            if let Some(seg) = st.segments.get_mut(&self.base) {
                seg.bytes += written;
            }
            for (req, (id, offset, len, xid, captured_at_us)) in batch.into_iter().zip(pending) {
                st.last_id = id;
                let cached = (st.cached_bytes + req.payload.len() <= CACHE_BYTES).then(|| {
                    st.cached_bytes += req.payload.len();
                    req.payload.freeze()
                });
                st.intents.insert(
                    id,
                    IntentMeta {
                        segment: self.base,
                        offset,
                        len,
                        xid,
                        captured_at_us,
                        outcome: None,
                        cached,
                    },
                );
                replies.push((req.reply, Ok(id)));
            }
        }
        journal
            .counters
            .appends
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        journal.bump();
        replies
    }

    fn rotate(&mut self, journal: &Journal) -> Result<(), JournalError> {
        let base = journal.lock().last_id + 1;
        let path = segment_path(&journal.opts.dir, base);
        self.file.sync_all().map_err(io_err(&path))?;
        let chunk = prealloc_chunk(&journal.opts);
        self.file = create_segment(&path, chunk)?;
        sync_dir(&journal.opts.dir)?;
        self.base = base;
        self.len = MAGIC.len() as u64;
        self.allocated = self.len.max(chunk);
        let mut st = journal.lock();
        st.total_bytes += self.len;
        st.segments.insert(
            base,
            Segment {
                path,
                bytes: self.len,
            },
        );
        Ok(())
    }
}

/// How much zeroed space the writer keeps ahead: [`PREALLOC_CHUNK`], or the segment size when
/// smaller (rounded up to whole pages).
fn prealloc_chunk(opts: &JournalOptions) -> u64 {
    opts.segment_bytes
        .div_ceil(4096)
        .max(1)
        .saturating_mul(4096)
        .min(PREALLOC_CHUNK)
}

fn frame(buf: &mut BytesMut, kind: u8, id: u64, payload: &[u8]) {
    let start = buf.len();
    buf.put_u32_le((1 + 8 + payload.len()) as u32);
    buf.put_u32_le(0);
    buf.put_u8(kind);
    buf.put_u64_le(id);
    buf.put_slice(payload);
    let crc = crc32c::crc32c(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// `(kind, id, payload)` of a whole frame whose checksum matches.
fn parse_frame(buf: &[u8]) -> Option<(u8, u64, &[u8])> {
    if buf.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    if len < 9 || buf.len() != 8 + len || crc32c::crc32c(&buf[8..]) != crc {
        return None;
    }
    let id = u64::from_le_bytes(buf[9..17].try_into().ok()?);
    Some((buf[8], id, &buf[17..]))
}

/// Reads one segment into `state`; cuts a torn or corrupt tail. Returns the length of its
/// records and the file's length (zeroed space included).
fn scan_segment(
    path: &Path,
    base: u64,
    state: &mut State,
    counters: &JournalCounters,
    last: bool,
) -> Result<(u64, u64), JournalError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path))?;
    let mut at = if data.starts_with(MAGIC) {
        MAGIC.len()
    } else {
        0
    };
    let mut bad = at == 0;
    while !bad && at < data.len() {
        let rest = &data[at..];
        let len = match rest.get(0..4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
            None => {
                bad = true;
                break;
            }
        };
        if !(9..=MAX_RECORD).contains(&len) || rest.len() < 8 + len {
            bad = true;
            break;
        }
        let Some((kind, id, payload)) = parse_frame(&rest[..8 + len]) else {
            bad = true;
            break;
        };
        match kind {
            KIND_INTENT => {
                let txn = codec::decode(Bytes::copy_from_slice(payload));
                let (xid, captured_at_us) = match &txn {
                    Ok(t) => (t.xid, t.captured_at_us),
                    Err(_) => (None, 0),
                };
                state.intents.insert(
                    id,
                    IntentMeta {
                        segment: base,
                        offset: at as u64,
                        len: (8 + len) as u32,
                        xid,
                        captured_at_us,
                        outcome: None,
                        cached: None,
                    },
                );
                state.last_id = state.last_id.max(id);
            }
            KIND_OUTCOME => {
                if let Some(m) = state.intents.get_mut(&id) {
                    m.outcome = Some(payload.first() == Some(&1));
                }
            }
            _ => {
                bad = true;
                break;
            }
        }
        at += 8 + len;
    }
    if bad && at >= MAGIC.len() && data[at..].iter().all(|&b| b == 0) {
        // The records end where the preallocated zeros begin.
        return Ok((at as u64, data.len() as u64));
    }
    if bad {
        counters.cut_tails.fetch_add(1, Ordering::Relaxed);
        let cut = data.len() - at.max(MAGIC.len()).min(data.len());
        if last {
            warn!(segment = %path.display(), offset = at, cut_bytes = cut, "torn or corrupt journal tail cut");
        } else {
            error!(segment = %path.display(), offset = at, cut_bytes = cut,
                "corrupt record inside an older journal segment: the rest of that segment is cut");
        }
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        if at == 0 {
            // Not even the magic line: rewrite it.
            f.set_len(0).map_err(io_err(path))?;
            f.write_all_at(MAGIC, 0).map_err(io_err(path))?;
            at = MAGIC.len();
        } else {
            f.set_len(at as u64).map_err(io_err(path))?;
        }
        f.sync_all().map_err(io_err(path))?;
        return Ok((at as u64, at as u64));
    }
    Ok((at as u64, data.len() as u64))
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// A new segment: the magic line, then zeros up to `len` bytes, synced.
fn create_segment(path: &Path, len: u64) -> Result<File, JournalError> {
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut head = MAGIC.to_vec();
    head.resize((len as usize).max(MAGIC.len()), 0);
    f.write_all(&head).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(f)
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(JournalError::Locked(dir.to_path_buf()));
    }
    Ok(f)
}

/// The journal's identity, created once and kept in `journal.id`.
fn journal_uuid(dir: &Path) -> Result<String, JournalError> {
    let path = dir.join("journal.id");
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    let id: u128 = rand::random();
    let text = format!("{id:032x}");
    let tmp = dir.join("journal.id.tmp");
    fs::write(&tmp, &text)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_detect_damage() {
        let mut buf = BytesMut::new();
        frame(&mut buf, KIND_INTENT, 42, b"hello");
        let (kind, id, payload) = parse_frame(&buf).unwrap();
        assert_eq!((kind, id, payload), (KIND_INTENT, 42, &b"hello"[..]));
        let mut bad = buf.to_vec();
        bad[HEADER] ^= 1;
        assert!(parse_frame(&bad).is_none());
        assert!(parse_frame(&buf[..buf.len() - 1]).is_none());
    }
}
