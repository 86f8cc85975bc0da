//! Parked transactions: journal intents the secondary refused for good (or whose outcome cannot
//! be known), kept in `journal_dir/parked/` for an operator to inspect and replay.
//!
//! Each is `<id>.rec` (the journal frame, checksummed, as it was) and `<id>.json` (why).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{codec, TxnRecord};

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
pub fn park(journal_dir: &Path, raw: &[u8], info: &ParkedInfo) -> io::Result<()> {
    let d = dir(journal_dir);
    fs::create_dir_all(&d)?;
    fs::write(d.join(format!("{:020}.rec", info.id)), raw)?;
    let json = serde_json::to_vec_pretty(info).map_err(io::Error::other)?;
    fs::write(d.join(format!("{:020}.json", info.id)), json)
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
pub fn load(journal_dir: &Path, id: u64) -> io::Result<TxnRecord> {
    let raw = fs::read(dir(journal_dir).join(format!("{id:020}.rec")))?;
    // Frame: len u32, crc u32, kind u8, id u64, payload.
    if raw.len() < 17
        || crc32c::crc32c(&raw[8..]) != u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]])
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "checksum mismatch",
        ));
    }
    codec::decode(bytes::Bytes::copy_from_slice(&raw[17..]))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}
