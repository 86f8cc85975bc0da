//! What the journal knows in memory, without I/O: the segments on disk, the intents not yet
//! applied (where each is, its outcome, its payload while the cache allows), the applied
//! position and the outcomes not yet written. The writer, the open scan and the API change it
//! under the journal's lock.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};

use super::format::Record;
use crate::mirror::codec;

/// Payloads of unapplied intents kept in memory, at most (beyond, the applier reads the file).
const CACHE_BYTES: usize = 32 << 20;

/// Where an intent is, and what is known of it.
#[derive(Debug, Clone)]
pub(super) struct IntentMeta {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
    pub xid: Option<i64>,
    pub captured_at_us: i64,
    pub outcome: Option<bool>,
    /// The payload as written, kept while [`CACHE_BYTES`] allows: the applier decodes it
    /// without reading the file back.
    pub cached: Option<Bytes>,
}

impl IntentMeta {
    /// An intent whose frame is `len` bytes at `offset` of segment `segment`; outcome unknown.
    pub fn new(segment: u64, offset: u64, len: u32, xid: Option<i64>, captured_at_us: i64) -> Self {
        IntentMeta {
            segment,
            offset,
            len,
            xid,
            captured_at_us,
            outcome: None,
            cached: None,
        }
    }
}

#[derive(Debug)]
pub(super) struct Segment {
    pub path: PathBuf,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// By base id (the first id the segment may hold).
    pub segments: BTreeMap<u64, Segment>,
    /// Intents not yet applied (or skipped), by id.
    pub intents: BTreeMap<u64, IntentMeta>,
    pub total_bytes: u64,
    pub applied: u64,
    pub last_id: u64,
    /// Outcomes known but not yet written (the writer takes them with its next batch).
    pub unwritten: Vec<(u64, bool)>,
    /// Bytes of the payloads in [`IntentMeta::cached`].
    pub cached_bytes: usize,
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

impl State {
    /// A segment file whose records take `bytes` (the magic line included).
    pub fn add_segment(&mut self, base: u64, path: PathBuf, bytes: u64) {
        self.total_bytes += bytes;
        self.segments.insert(base, Segment { path, bytes });
    }

    /// `bytes` more records written at the end of segment `base`.
    pub fn grow_segment(&mut self, base: u64, bytes: u64) {
        self.total_bytes += bytes;
        if let Some(seg) = self.segments.get_mut(&base) {
            seg.bytes += bytes;
        }
    }

    /// The records of segment `base` read back on open, in file order. An outcome applies to
    /// an intent seen before it (in this segment or an older one).
    pub fn add_records(&mut self, base: u64, records: &[Record<'_>]) {
        for record in records {
            match *record {
                Record::Intent {
                    id,
                    offset,
                    len,
                    payload,
                } => {
                    // An undecodable payload is still an intent: the applier parks it.
                    let (xid, captured_at_us) = codec::decode(Bytes::copy_from_slice(payload))
                        .map_or((None, 0), |t| (t.xid, t.captured_at_us));
                    let meta =
                        IntentMeta::new(base, offset as u64, len as u32, xid, captured_at_us);
                    self.intents.insert(id, meta);
                    self.last_id = self.last_id.max(id);
                }
                Record::Outcome { id, committed } => {
                    if let Some(m) = self.intents.get_mut(&id) {
                        m.outcome = Some(committed);
                    }
                }
            }
        }
    }

    /// Intent `id`, just made durable by the writer: the newest id, its payload kept in memory
    /// while the cache has room.
    pub fn add_written(&mut self, id: u64, mut meta: IntentMeta, payload: BytesMut) {
        self.last_id = id;
        if self.cached_bytes + payload.len() <= CACHE_BYTES {
            self.cached_bytes += payload.len();
            meta.cached = Some(payload.freeze());
        }
        self.intents.insert(id, meta);
    }

    /// Records the primary's answer for intent `id`; `false` when there is nothing new (the
    /// outcome was known already, or the intent is applied).
    pub fn set_outcome(&mut self, id: u64, committed: bool) -> bool {
        match self.intents.get_mut(&id) {
            Some(m) if m.outcome.is_none() => m.outcome = Some(committed),
            _ => return false,
        }
        self.unwritten.push((id, committed));
        true
    }

    /// Intents without an outcome, in id order.
    pub fn in_doubt(&self) -> Vec<InDoubt> {
        self.intents
            .iter()
            .filter(|(_, m)| m.outcome.is_none())
            .map(|(&id, m)| InDoubt {
                id,
                xid: m.xid,
                captured_at_us: m.captured_at_us,
            })
            .collect()
    }

    /// Up to `max` consecutive intents after `after` whose outcome is known (journal order is
    /// commit order: the first one without an outcome ends them).
    pub fn ready(&self, after: u64, max: usize) -> Vec<Ready> {
        self.intents
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

    /// Intents not yet applied, and the capture time of the oldest one not known aborted.
    pub fn pending(&self) -> (u64, Option<i64>) {
        let oldest = self
            .intents
            .values()
            .filter(|m| m.outcome != Some(false))
            .map(|m| m.captured_at_us)
            .min();
        (self.intents.len() as u64, oldest)
    }

    /// Forgets every intent up to `id` and the segments that hold nothing after it (never the
    /// newest, which keeps the id sequence going). `None` when `id` is not past the applied
    /// position; else the segments to remove from disk, by base and path.
    pub fn forget_through(&mut self, id: u64) -> Option<Vec<(u64, PathBuf)>> {
        if id <= self.applied {
            return None;
        }
        self.applied = id;
        let rest = self.intents.split_off(&(id + 1));
        let done = std::mem::replace(&mut self.intents, rest);
        let freed: usize = done
            .values()
            .filter_map(|m| m.cached.as_ref())
            .map(Bytes::len)
            .sum();
        self.cached_bytes -= freed;
        Some(self.remove_segments_through(id))
    }

    fn remove_segments_through(&mut self, id: u64) -> Vec<(u64, PathBuf)> {
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        let mut removed = Vec::new();
        for pair in bases.windows(2) {
            // Segment pair[0] holds ids below pair[1].
            if pair[1] - 1 <= id {
                if let Some(seg) = self.segments.remove(&pair[0]) {
                    self.total_bytes -= seg.bytes;
                    removed.push((pair[0], seg.path));
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segments based at 1, 4 and 7, each holding three intents; intents 1..=8 written.
    fn state() -> State {
        let mut st = State::default();
        for base in [1, 4, 7] {
            st.add_segment(base, PathBuf::from(format!("{base}.seg")), 100);
        }
        for id in 1..=8 {
            let segment = (id - 1) / 3 * 3 + 1;
            let payload = BytesMut::from(&b"payload"[..]);
            st.add_written(
                id,
                IntentMeta::new(segment, 8, 24, None, id as i64),
                payload,
            );
        }
        st
    }

    #[test]
    fn ready_intents_stop_at_the_first_unknown_outcome() {
        let mut st = state();
        assert!(st.ready(0, 10).is_empty());
        assert!(st.set_outcome(1, true));
        assert!(st.set_outcome(2, false));
        assert!(st.set_outcome(4, true));
        assert!(!st.set_outcome(1, false), "known already");
        let ready: Vec<(u64, bool)> = st
            .ready(0, 10)
            .iter()
            .map(|r| (r.id, r.committed))
            .collect();
        assert_eq!(ready, vec![(1, true), (2, false)]);
        assert_eq!(st.ready(0, 1).len(), 1);
        assert_eq!(st.unwritten, vec![(1, true), (2, false), (4, true)]);
        let doubt: Vec<u64> = st.in_doubt().iter().map(|d| d.id).collect();
        assert_eq!(doubt, vec![3, 5, 6, 7, 8]);
        assert_eq!(st.pending(), (8, Some(1)));
    }

    #[test]
    fn forgetting_applied_intents_removes_the_segments_they_filled() {
        let mut st = state();
        assert_eq!(st.cached_bytes, 8 * 7);
        assert_eq!(
            st.forget_through(3),
            Some(vec![(1, PathBuf::from("1.seg"))])
        );
        assert_eq!(st.forget_through(2), None, "not past the applied position");
        assert_eq!(
            (st.intents.len(), st.cached_bytes, st.total_bytes),
            (5, 5 * 7, 200)
        );
        // The newest segment stays, even with all its intents applied.
        assert_eq!(
            st.forget_through(8),
            Some(vec![(4, PathBuf::from("4.seg"))])
        );
        assert_eq!(st.segments.keys().copied().collect::<Vec<_>>(), vec![7]);
        assert_eq!((st.intents.len(), st.cached_bytes), (0, 0));
        assert!(!st.set_outcome(8, true), "applied already");
    }

    #[test]
    fn outcomes_read_back_apply_to_the_intents_before_them() {
        let mut st = State::default();
        let records = [
            Record::Outcome {
                id: 1,
                committed: true,
            },
            Record::Intent {
                id: 1,
                offset: 8,
                len: 30,
                payload: b"not a transaction",
            },
            Record::Intent {
                id: 2,
                offset: 38,
                len: 30,
                payload: b"not a transaction",
            },
            Record::Outcome {
                id: 2,
                committed: false,
            },
        ];
        st.add_records(1, &records);
        assert_eq!(st.last_id, 2);
        assert_eq!(st.intents[&1].outcome, None, "its outcome came before it");
        assert_eq!(st.intents[&2].outcome, Some(false));
        assert_eq!((st.intents[&2].offset, st.intents[&2].xid), (38, None));
    }

    #[test]
    fn the_cache_keeps_payloads_while_it_has_room() {
        let mut st = State::default();
        let big = BytesMut::from(&vec![0u8; CACHE_BYTES - 1][..]);
        st.add_written(1, IntentMeta::new(1, 8, 0, None, 0), big);
        st.add_written(
            2,
            IntentMeta::new(1, 8, 0, None, 0),
            BytesMut::from(&b"xy"[..]),
        );
        st.add_written(
            3,
            IntentMeta::new(1, 8, 0, None, 0),
            BytesMut::from(&b"z"[..]),
        );
        assert!(st.intents[&1].cached.is_some());
        assert!(st.intents[&2].cached.is_none(), "over the limit");
        assert!(st.intents[&3].cached.is_some(), "fits exactly");
        assert_eq!(st.cached_bytes, CACHE_BYTES);
    }
}
