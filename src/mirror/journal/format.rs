//! The on-disk format of a journal segment, without I/O: the magic line, the record frame, and
//! the scan that finds where a segment's good records end and what follows them.
//!
//! A frame is `len u32 | crc32c u32 | kind u8 | id u64 | payload`, little-endian, `len`
//! counting from `kind` and the checksum covering the same bytes.

use bytes::{BufMut, BytesMut};

/// The first bytes of every segment.
pub(super) const MAGIC: &[u8; 8] = b"PGBJNL1\n";
/// A frame's bytes before its payload.
pub(super) const HEADER: usize = 4 + 4 + 1 + 8;
const KIND_INTENT: u8 = 1;
const KIND_OUTCOME: u8 = 2;
/// A record larger than this is taken for corruption when scanning.
const MAX_RECORD: usize = 1 << 30;

/// Appends the frame of an intent: the encoded transaction under its id.
pub(super) fn intent(buf: &mut BytesMut, id: u64, payload: &[u8]) {
    frame(buf, KIND_INTENT, id, payload);
}

/// Appends the frame of an outcome: the primary's answer to intent `id`'s COMMIT.
pub(super) fn outcome(buf: &mut BytesMut, id: u64, committed: bool) {
    frame(buf, KIND_OUTCOME, id, &[committed as u8]);
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

/// The payload of intent `id` from its whole frame (as read back from a segment), or why it is
/// not there: the checksum does not match, or the frame is not that intent's.
pub(super) fn intent_payload(buf: &[u8], id: u64) -> Result<&[u8], &'static str> {
    let (kind, rid, payload) = parse_frame(buf).ok_or("checksum mismatch")?;
    if kind != KIND_INTENT || rid != id {
        return Err("not this intent");
    }
    Ok(payload)
}

/// One good record of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Record<'a> {
    /// An intent: its frame is `len` bytes at `offset` in the segment.
    Intent {
        id: u64,
        offset: usize,
        len: usize,
        payload: &'a [u8],
    },
    Outcome {
        id: u64,
        committed: bool,
    },
}

/// What follows a segment's good records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tail {
    /// Nothing: the records end at the end of the file.
    Clean,
    /// Zeros only: space the writer preallocated; the next record goes where they begin.
    Zeros,
    /// Anything else (a torn write, a bad checksum, an unknown kind): cut it.
    Torn,
    /// The file does not start with the magic line: nothing in it is usable.
    NoMagic,
}

/// A segment scanned.
#[derive(Debug)]
pub(super) struct Scan<'a> {
    /// The good records, in file order.
    pub records: Vec<Record<'a>>,
    /// Where the good records end: the end of the magic line when there are none, 0 when the
    /// magic line is missing.
    pub end: usize,
    pub tail: Tail,
}

/// Reads a segment's records up to the first frame that does not parse, and says what comes
/// after them.
pub(super) fn scan(data: &[u8]) -> Scan<'_> {
    if !data.starts_with(MAGIC) {
        return Scan {
            records: Vec::new(),
            end: 0,
            tail: Tail::NoMagic,
        };
    }
    let mut records = Vec::new();
    let mut end = MAGIC.len();
    while let Some((record, len)) = record_at(data, end) {
        records.push(record);
        end += len;
    }
    let tail = if end == data.len() {
        Tail::Clean
    } else if data[end..].iter().all(|&b| b == 0) {
        Tail::Zeros
    } else {
        Tail::Torn
    };
    Scan { records, end, tail }
}

/// The record whose frame starts at `at`, and the frame's length; `None` when no whole, good
/// frame of a known kind is there.
fn record_at(data: &[u8], at: usize) -> Option<(Record<'_>, usize)> {
    let rest = &data[at..];
    let len = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
    if !(9..=MAX_RECORD).contains(&len) || rest.len() < 8 + len {
        return None;
    }
    let (kind, id, payload) = parse_frame(&rest[..8 + len])?;
    let record = match kind {
        KIND_INTENT => Record::Intent {
            id,
            offset: at,
            len: 8 + len,
            payload,
        },
        KIND_OUTCOME => Record::Outcome {
            id,
            committed: payload.first() == Some(&1),
        },
        _ => return None,
    };
    Some((record, 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment: the magic line, intents 1 and 2, the outcome of 1.
    fn segment() -> BytesMut {
        let mut buf = BytesMut::from(&MAGIC[..]);
        intent(&mut buf, 1, b"first");
        intent(&mut buf, 2, b"second");
        outcome(&mut buf, 1, true);
        buf
    }

    fn ids(scan: &Scan<'_>) -> Vec<u64> {
        scan.records
            .iter()
            .map(|r| match r {
                Record::Intent { id, .. } | Record::Outcome { id, .. } => *id,
            })
            .collect()
    }

    #[test]
    fn frames_roundtrip_and_detect_damage() {
        let mut buf = BytesMut::new();
        intent(&mut buf, 42, b"hello");
        let (kind, id, payload) = parse_frame(&buf).unwrap();
        assert_eq!((kind, id, payload), (KIND_INTENT, 42, &b"hello"[..]));
        assert_eq!(intent_payload(&buf, 42), Ok(&b"hello"[..]));
        assert_eq!(intent_payload(&buf, 43), Err("not this intent"));
        let mut bad = buf.to_vec();
        bad[HEADER] ^= 1;
        assert!(parse_frame(&bad).is_none());
        assert_eq!(intent_payload(&bad, 42), Err("checksum mismatch"));
        assert!(parse_frame(&buf[..buf.len() - 1]).is_none());
    }

    #[test]
    fn a_run_of_good_records_is_read_whole() {
        let data = segment();
        let scan = scan(&data);
        assert_eq!(scan.tail, Tail::Clean);
        assert_eq!(scan.end, data.len());
        assert_eq!(
            scan.records,
            vec![
                Record::Intent {
                    id: 1,
                    offset: MAGIC.len(),
                    len: HEADER + 5,
                    payload: b"first",
                },
                Record::Intent {
                    id: 2,
                    offset: MAGIC.len() + HEADER + 5,
                    len: HEADER + 6,
                    payload: b"second",
                },
                Record::Outcome {
                    id: 1,
                    committed: true,
                },
            ]
        );
    }

    #[test]
    fn an_outcome_says_committed_or_not() {
        let mut data = BytesMut::from(&MAGIC[..]);
        outcome(&mut data, 7, false);
        let scan = scan(&data);
        assert_eq!(
            scan.records,
            vec![Record::Outcome {
                id: 7,
                committed: false
            }]
        );
    }

    #[test]
    fn trailing_zeros_are_free_space() {
        let mut data = segment();
        let end = data.len();
        data.resize(end + 4096, 0);
        let scan = scan(&data);
        assert_eq!(
            (scan.tail, scan.end, scan.records.len()),
            (Tail::Zeros, end, 3)
        );
    }

    #[test]
    fn a_torn_tail_is_cut_after_the_last_good_record() {
        let good = segment();
        let mut data = good.clone();
        intent(&mut data, 3, b"third, torn");
        for cut in [
            good.len() + 1,
            good.len() + 3,
            good.len() + HEADER,
            data.len() - 1,
        ] {
            let scan = scan(&data[..cut]);
            assert_eq!(
                (scan.tail, scan.end),
                (Tail::Torn, good.len()),
                "cut at {cut}"
            );
            assert_eq!(ids(&scan), vec![1, 2, 1]);
        }
    }

    #[test]
    fn a_record_split_across_the_end_of_the_zeroed_space_is_torn() {
        // The length says more than there is; what is there is not all zeros.
        let good = segment();
        let mut data = good.clone();
        intent(&mut data, 3, &[0u8; 64]);
        data.truncate(good.len() + HEADER + 10);
        let scan = scan(&data);
        assert_eq!((scan.tail, scan.end), (Tail::Torn, good.len()));
    }

    #[test]
    fn a_bad_checksum_mid_file_ends_the_good_records() {
        let mut data = segment();
        let second = MAGIC.len() + HEADER + 5;
        data[second + HEADER] ^= 0xff;
        let scan = scan(&data);
        assert_eq!((scan.tail, scan.end), (Tail::Torn, second));
        assert_eq!(ids(&scan), vec![1], "nothing after the damage is read");
    }

    #[test]
    fn an_unknown_kind_or_a_bad_length_ends_the_good_records() {
        let mut data = BytesMut::from(&MAGIC[..]);
        frame(&mut data, 9, 1, b"x");
        assert_eq!(scan(&data).tail, Tail::Torn);
        let mut data = BytesMut::from(&MAGIC[..]);
        data.put_u32_le(3);
        data.put_slice(&[1; 12]);
        assert_eq!(scan(&data).tail, Tail::Torn);
    }

    #[test]
    fn a_segment_of_its_magic_line_alone_is_empty_and_clean() {
        let scan = scan(MAGIC);
        assert_eq!(
            (scan.tail, scan.end, scan.records.len()),
            (Tail::Clean, 8, 0)
        );
    }

    #[test]
    fn an_empty_file_or_a_wrong_magic_line_holds_nothing() {
        for data in [
            &b""[..],
            &b"PGBJNL"[..],
            &[0u8; 64][..],
            &b"PGBJNL2\nxyz"[..],
        ] {
            let scan = scan(data);
            assert_eq!(
                (scan.tail, scan.end, scan.records.len()),
                (Tail::NoMagic, 0, 0)
            );
        }
    }
}
