//! The journal as the queue between sessions and the applier: what sessions append (intents,
//! outcomes), what the resolver and the applier take (in-doubt and ready intents, read back),
//! what the applier gives back (the applied position), and the figures status shows.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use super::disk::segment_path;
use super::format;
use super::writer::{Message, Request};
use super::{io_err, InDoubt, Journal, JournalError, Ready};
use crate::config::OnFull;
use crate::mirror::{codec, TxnRecord};

impl Journal {
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
    /// written to disk with the next intents (at most [`super::writer::OUTCOME_DELAY`] later),
    /// without waking the writer or waiting for it.
    pub fn append_outcome(&self, id: u64, committed: bool) -> Result<(), JournalError> {
        if self.tx.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            return Err(JournalError::Closed);
        }
        // Already known (resolved twice) or already applied: nothing new.
        if self.lock().set_outcome(id, committed) {
            self.bump();
        }
        Ok(())
    }

    /// Intents without an outcome, in id order.
    pub fn in_doubt(&self) -> Vec<InDoubt> {
        self.lock().in_doubt()
    }

    /// The first intent after `after`, if its outcome is known. `None` when there is none yet
    /// or its outcome is still unknown (the applier waits: journal order is commit order).
    pub fn next_ready(&self, after: u64) -> Option<Ready> {
        self.lock().ready(after, 1).pop()
    }

    /// Up to `max` consecutive ready intents after `after`.
    pub fn ready_batch(&self, after: u64, max: usize) -> Vec<Ready> {
        self.lock().ready(after, max)
    }

    /// Reads an intent's transaction back (from memory while cached, else from disk with its
    /// checksum verified).
    pub fn read(&self, id: u64) -> Result<TxnRecord, JournalError> {
        let corrupt = |reason: &str| JournalError::Corrupt {
            id,
            reason: reason.into(),
        };
        let cached = self.lock().intents.get(&id).and_then(|m| m.cached.clone());
        if let Some(payload) = cached {
            return codec::decode(payload).map_err(|e| corrupt(e.reason()));
        }
        let buf = self.raw(id)?;
        let payload = format::intent_payload(&buf, id).map_err(corrupt)?;
        codec::decode(Bytes::copy_from_slice(payload)).map_err(|e| corrupt(e.reason()))
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
        let Some(removed) = self.lock().forget_through(id) else {
            return;
        };
        for (base, path) in removed {
            self.remove_segment(base, &path);
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
        self.lock().pending()
    }

    /// Wakes on any change (new intent, outcome, applied position).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn send(&self, req: Message) -> Result<(), JournalError> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.as_ref()
            .ok_or(JournalError::Closed)?
            .send(req)
            .map_err(|_| JournalError::Closed)
    }

    /// An open file of segment `segment`, kept for the next reads.
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

    /// Removes an applied segment's file (and its open reader).
    fn remove_segment(&self, base: u64, path: &Path) {
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&base);
        match fs::remove_file(path) {
            Ok(()) => info!(segment = %path.display(), "applied journal segment removed"),
            Err(e) => {
                warn!(segment = %path.display(), error = %e, "cannot remove an applied segment")
            }
        }
    }

    /// Whether the journal is above `max_bytes` now; logs when it becomes so.
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
