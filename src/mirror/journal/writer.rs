//! The journal's writer thread: takes whatever is queued, writes it in one `pwrite` and fsyncs
//! once for all of it (group commit); keeps zeroed space written ahead of the records so an
//! append's fdatasync writes data blocks only (no file size); starts a new segment when the
//! current one is full.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::oneshot;
use tracing::{error, info_span, warn};

use super::disk::{create_segment, segment_path, sync_dir, Tip};
use super::format::{self, MAGIC};
use super::state::IntentMeta;
use super::{io_err, Journal, JournalError, JournalOptions};
use crate::config::OnFull;

/// Zeroed space the writer keeps ahead of the end of a segment (at most the segment size).
const PREALLOC_CHUNK: u64 = 1 << 20;
/// Outcomes wait at most this long for intents to be written with.
pub(super) const OUTCOME_DELAY: Duration = Duration::from_millis(200);
/// Intents taken into one batch, at most.
const MAX_BATCH: usize = 4096;
/// How long a write that found the disk full waits before it is tried again (backpressure).
const NO_SPACE_RETRY: Duration = Duration::from_millis(200);

/// What the writer thread is sent.
pub(super) enum Message {
    Intent(Request),
    /// The outcomes not written yet, when the journal closes.
    Outcomes(Vec<(u64, bool)>),
}

/// An intent for the writer thread.
pub(super) struct Request {
    pub payload: BytesMut,
    pub xid: Option<i64>,
    pub captured_at_us: i64,
    pub reply: oneshot::Sender<Result<u64, JournalError>>,
}

/// How much zeroed space the writer keeps ahead: [`PREALLOC_CHUNK`], or the segment size when
/// smaller (rounded up to whole pages).
pub(super) fn prealloc_chunk(opts: &JournalOptions) -> u64 {
    opts.segment_bytes
        .div_ceil(4096)
        .max(1)
        .saturating_mul(4096)
        .min(PREALLOC_CHUNK)
}

/// The writer thread: batches whatever is queued into one write and one fsync.
pub(super) struct Writer {
    journal: Weak<Journal>,
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

/// Where an intent of this batch went in the segment.
struct Written {
    id: u64,
    offset: u64,
    len: u32,
}

impl Writer {
    /// A writer going on at `tip` of the open segment `file`.
    pub fn new(journal: Weak<Journal>, file: File, tip: Tip, chunk: u64) -> Writer {
        Writer {
            journal,
            file,
            base: tip.base,
            len: tip.len,
            allocated: tip.allocated,
            chunk,
            carried: Vec::new(),
        }
    }

    /// The thread's body, until the journal closes or is dropped.
    pub fn run(mut self, rx: mpsc::Receiver<Message>) {
        let _span = info_span!("journal_writer").entered();
        let mut buf = BytesMut::with_capacity(1 << 20);
        while let Some(batch) = self.next_batch(&rx) {
            let Some(journal) = self.journal.upgrade() else {
                break;
            };
            let outcomes = std::mem::take(&mut journal.lock().unwritten);
            self.carried.extend(outcomes);
            if batch.is_empty() && self.carried.is_empty() {
                continue;
            }
            let replies = self.write_batch(&journal, batch, &mut buf);
            self.rotate_if_full(&journal);
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

    /// Waits for a message (at most [`OUTCOME_DELAY`]: then it is time to write the outcomes
    /// that came without intents), then takes whatever else is queued. `None` once the
    /// journal has closed.
    fn next_batch(&mut self, rx: &mpsc::Receiver<Message>) -> Option<Vec<Request>> {
        let mut batch = Vec::new();
        match rx.recv_timeout(OUTCOME_DELAY) {
            Ok(message) => self.take(message, &mut batch),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(message) => self.take(message, &mut batch),
                Err(_) => break,
            }
        }
        Some(batch)
    }

    fn take(&mut self, message: Message, batch: &mut Vec<Request>) {
        match message {
            Message::Intent(r) => batch.push(r),
            Message::Outcomes(o) => self.carried.extend(o),
        }
    }

    /// Writes the carried outcomes and the batch's intents, fsyncs when there are intents, and
    /// gives each intent its id; or each the error. With `on_full = "backpressure"` a full disk
    /// is waited out.
    fn write_batch(
        &mut self,
        journal: &Journal,
        batch: Vec<Request>,
        buf: &mut BytesMut,
    ) -> Vec<Reply> {
        loop {
            let last_id = journal.lock().last_id;
            let outcomes = std::mem::take(&mut self.carried);
            let written = self.encode(buf, last_id, &outcomes, &batch);
            match self.write_out(journal, buf, !batch.is_empty()) {
                Ok(()) => {
                    journal.counters.no_space.store(false, Ordering::Relaxed);
                    self.len += buf.len() as u64;
                    self.allocated = self.allocated.max(self.len);
                    return self.commit(journal, batch, written, buf.len() as u64);
                }
                Err(e) => {
                    let no_space = self.undo_write(journal, &e);
                    self.carried = outcomes;
                    if no_space && journal.opts.on_full == OnFull::Backpressure {
                        // Writers wait; retry until space comes back.
                        std::thread::sleep(NO_SPACE_RETRY);
                        continue;
                    }
                    return self.refuse(journal, batch, &e, no_space);
                }
            }
        }
    }

    /// Frames the outcomes, then the intents with the ids after `last_id`, into `buf`.
    fn encode(
        &self,
        buf: &mut BytesMut,
        last_id: u64,
        outcomes: &[(u64, bool)],
        batch: &[Request],
    ) -> Vec<Written> {
        buf.clear();
        for &(id, committed) in outcomes {
            format::outcome(buf, id, committed);
        }
        let mut written = Vec::with_capacity(batch.len());
        for (req, id) in batch.iter().zip(last_id + 1..) {
            let offset = self.len + buf.len() as u64;
            format::intent(buf, id, &req.payload);
            let len = (self.len + buf.len() as u64 - offset) as u32;
            written.push(Written { id, offset, len });
        }
        written
    }

    /// One `pwrite` at the end of the records, and an fdatasync when intents wait for it.
    fn write_out(&self, journal: &Journal, buf: &[u8], durable: bool) -> io::Result<()> {
        self.file.write_all_at(buf, self.len)?;
        if durable {
            journal.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// After a failed write: cuts whatever part of the batch reached the file (the zeroed space
    /// ahead goes with it; upkeep writes it again). Returns whether the disk is full.
    fn undo_write(&mut self, journal: &Journal, e: &io::Error) -> bool {
        let _ = self.file.set_len(self.len);
        self.allocated = self.len;
        let no_space = e.raw_os_error() == Some(libc::ENOSPC);
        journal.counters.no_space.store(no_space, Ordering::Relaxed);
        error!(error = %e, no_space, "journal write failed");
        no_space
    }

    /// Every intent of a batch that could not be written gets the error.
    fn refuse(
        &self,
        journal: &Journal,
        batch: Vec<Request>,
        e: &io::Error,
        no_space: bool,
    ) -> Vec<Reply> {
        let error = || {
            if no_space {
                JournalError::NoSpace
            } else {
                JournalError::Io {
                    path: segment_path(&journal.opts.dir, self.base),
                    source: io::Error::new(e.kind(), e.to_string()),
                }
            }
        };
        batch
            .into_iter()
            .map(|req| (req.reply, Err(error())))
            .collect()
    }

    /// The batch is durable: its intents join the journal's state, each answered with its id.
    fn commit(
        &mut self,
        journal: &Journal,
        batch: Vec<Request>,
        written: Vec<Written>,
        bytes: u64,
    ) -> Vec<Reply> {
        let replies: Vec<Reply> = {
            let mut st = journal.lock();
            st.grow_segment(self.base, bytes);
            batch
                .into_iter()
                .zip(written)
                .map(|(req, w)| {
                    let meta =
                        IntentMeta::new(self.base, w.offset, w.len, req.xid, req.captured_at_us);
                    st.add_written(w.id, meta, req.payload);
                    (req.reply, Ok(w.id))
                })
                .collect()
        };
        journal
            .counters
            .appends
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        journal.bump();
        replies
    }

    fn rotate_if_full(&mut self, journal: &Journal) {
        if self.len >= journal.opts.segment_bytes {
            if let Err(e) = self.rotate(journal) {
                error!(error = %e, "cannot start a new journal segment");
            }
        }
    }

    /// Starts a new segment after the last id written.
    fn rotate(&mut self, journal: &Journal) -> Result<(), JournalError> {
        let base = journal.lock().last_id + 1;
        let path = segment_path(&journal.opts.dir, base);
        self.file.sync_all().map_err(io_err(&path))?;
        self.file = create_segment(&path, self.chunk)?;
        sync_dir(&journal.opts.dir)?;
        self.base = base;
        self.len = MAGIC.len() as u64;
        self.allocated = self.len.max(self.chunk);
        journal.lock().add_segment(base, path, self.len);
        Ok(())
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
            format::outcome(&mut buf, id, committed);
        }
        if let Err(e) = self
            .file
            .write_all_at(&buf, self.len)
            .and_then(|()| self.file.sync_data())
        {
            warn!(error = %e, "cannot write the last outcomes: their intents will be resolved on restart");
        }
    }
}
