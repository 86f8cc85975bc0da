//! Shadow comparisons per table over time, for the read gate's "mismatch rate over the last
//! window": each table's compared and mismatched reads, in buckets of [`BUCKET_SECS`], kept for
//! [`KEEP_SECS`].

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The width of one bucket, in seconds.
pub const BUCKET_SECS: u64 = 10;
/// How far back buckets are kept: the longest window a gate can ask for.
pub const KEEP_SECS: u64 = 24 * 3600;

/// One bucket: its start (seconds since the epoch), reads compared, reads that differed.
type Bucket = (u64, u64, u64);

static TALLY: Mutex<Option<HashMap<String, VecDeque<Bucket>>>> = Mutex::new(None);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Counts one comparison of a shadow read of `table` (as rules name it).
pub fn record(table: &str, mismatched: bool) {
    record_at(table, mismatched, now());
}

fn record_at(table: &str, mismatched: bool, at: u64) {
    let start = at - at % BUCKET_SECS;
    let mut tally = TALLY.lock().unwrap_or_else(|e| e.into_inner());
    let buckets = tally
        .get_or_insert_with(HashMap::new)
        .entry(table.to_string())
        .or_default();
    match buckets.back_mut() {
        Some(b) if b.0 == start => {
            b.1 += 1;
            b.2 += mismatched as u64;
        }
        _ => buckets.push_back((start, 1, mismatched as u64)),
    }
    while buckets.front().is_some_and(|b| b.0 + KEEP_SECS < start) {
        buckets.pop_front();
    }
}

/// The shadow reads of `table` compared in the last `window_secs`, and how many differed.
pub fn over(table: &str, window_secs: u64) -> (u64, u64) {
    over_at(table, window_secs, now())
}

fn over_at(table: &str, window_secs: u64, at: u64) -> (u64, u64) {
    let since = at.saturating_sub(window_secs);
    let tally = TALLY.lock().unwrap_or_else(|e| e.into_inner());
    let Some(buckets) = tally.as_ref().and_then(|t| t.get(table)) else {
        return (0, 0);
    };
    buckets
        .iter()
        .filter(|b| b.0 + BUCKET_SECS > since)
        .fold((0, 0), |(c, m), b| (c + b.1, m + b.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_the_window_asked_for() {
        let t = "window_test_table";
        let base = 1_000_000;
        record_at(t, false, base);
        record_at(t, true, base + 1);
        record_at(t, false, base + 15);
        record_at(t, true, base + 600);
        assert_eq!(over_at(t, 60, base + 600), (1, 1));
        assert_eq!(over_at(t, 900, base + 600), (4, 2));
        assert_eq!(over_at(t, 900, base + 2000), (0, 0));
        assert_eq!(over_at("another", 900, base + 600), (0, 0));
    }
}
