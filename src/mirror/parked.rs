//! Parked transactions: journal intents the secondary refused for good (or whose outcome cannot
//! be known), kept in `journal_dir/parked/` for an operator to inspect and replay.
//!
//! Each is `<id>.rec` (the journal frame, checksummed, as it was) and `<id>.json` (why).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::codec::{self, DecodeError};
use super::TxnRecord;

/// Why a parked transaction could not be kept or read back.
#[derive(Debug, thiserror::Error)]
pub enum ParkedError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The kept frame does not match its checksum.
    #[error("checksum mismatch")]
    Checksum,
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Why a transaction was parked.
#[derive(Debug, Clone, Serialize)]
pub struct ParkedInfo {
    pub id: u64,
    pub ts: String,
    pub reason: String,
    pub table: Option<String>,
    pub sqlstate: Option<String>,
}

pub fn dir(journal_dir: &Path) -> PathBuf {
    journal_dir.join("parked")
}

/// Keeps the intent's frame and the reason.
pub fn park(journal_dir: &Path, raw: &[u8], info: &ParkedInfo) -> Result<(), ParkedError> {
    let d = dir(journal_dir);
    fs::create_dir_all(&d)?;
    fs::write(d.join(format!("{:020}.rec", info.id)), raw)?;
    let json = serde_json::to_vec_pretty(info)?;
    fs::write(d.join(format!("{:020}.json", info.id)), json)?;
    Ok(())
}

/// Forgets a parked transaction (it was applied after all, or replayed).
pub fn unpark(journal_dir: &Path, id: u64) {
    let d = dir(journal_dir);
    let _ = fs::remove_file(d.join(format!("{id:020}.rec")));
    let _ = fs::remove_file(d.join(format!("{id:020}.json")));
}

/// The ids of the parked transactions.
pub fn list(journal_dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = fs::read_dir(dir(journal_dir))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rec")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// Reads a parked transaction back (for a replay).
pub fn load(journal_dir: &Path, id: u64) -> Result<TxnRecord, ParkedError> {
    let raw = fs::read(dir(journal_dir).join(format!("{id:020}.rec")))?;
    // Frame: len u32, crc u32, kind u8, id u64, payload.
    if raw.len() < 17
        || crc32c::crc32c(&raw[8..]) != u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]])
    {
        return Err(ParkedError::Checksum);
    }
    Ok(codec::decode(bytes::Bytes::copy_from_slice(&raw[17..]))?)
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;

    /// A journal frame of `txn` as intent `id` (`len | crc32c | kind 1 | id | payload`).
    fn frame(id: u64, txn: &TxnRecord) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_u8(1);
        body.put_u64_le(id);
        codec::encode(txn, &mut body);
        let mut raw = Vec::new();
        raw.extend_from_slice(&(body.len() as u32).to_le_bytes());
        raw.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        raw.extend_from_slice(&body);
        raw
    }

    fn info(id: u64) -> ParkedInfo {
        ParkedInfo {
            id,
            ts: "2026-01-05T14:30:00Z".into(),
            reason: "23505: duplicate key".into(),
            table: Some("public.t".into()),
            sqlstate: Some("23505".into()),
        }
    }

    #[test]
    fn a_parked_transaction_is_listed_read_back_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let txn = TxnRecord::new(7, Some(1234));
        for id in [12, 3] {
            park(dir.path(), &frame(id, &txn), &info(id)).unwrap();
        }
        assert_eq!(list(dir.path()), vec![3, 12]);
        assert_eq!(load(dir.path(), 12).unwrap(), txn);
        unpark(dir.path(), 12);
        assert_eq!(list(dir.path()), vec![3]);
        assert!(matches!(load(dir.path(), 12), Err(ParkedError::Io(_))));
    }

    #[test]
    fn a_damaged_parked_frame_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = frame(5, &TxnRecord::new(1, None));
        let last = raw.len() - 1;
        raw[last] ^= 1;
        park(dir.path(), &raw, &info(5)).unwrap();
        let e = load(dir.path(), 5).unwrap_err();
        assert_eq!(e.to_string(), "checksum mismatch");
    }
}
