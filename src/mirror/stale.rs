//! Tables the mirror is known to have missed writes to: a statement pgbridge relayed but could
//! not capture (a MERGE, which has no RETURNING before PostgreSQL 17; a write inside a CTE; a
//! function that may write), or a transaction whose changes it could not journal. Capture marks
//! the table once the session's transaction has ended; status and the read gate show the mark;
//! the jobs verify the table and repair what differs, and clear the mark when nothing was
//! marked again meanwhile (src/migrate/auto.rs).
//!
//! Why not capture such a write's effect from `xmin`: the rows a transaction inserted or
//! updated carry its xid, but the rows it deleted are gone, and finding the others means
//! reading the whole table inside the client's transaction. A verify finds all three kinds of
//! difference, outside the application's path.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// One table's mark.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mark {
    /// When the first write the mirror missed (since the mark was last cleared) ended.
    #[serde(serialize_with = "as_rfc3339")]
    pub since: SystemTime,
    /// What the last one was.
    pub reason: String,
    /// How many such writes.
    pub writes: u64,
    /// Grows with every write marked, so that a repair clears only what it covered.
    #[serde(skip)]
    pub generation: u64,
}

fn as_rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::divergence::record::rfc3339(*t))
}

static MARKS: Mutex<BTreeMap<String, Mark>> = Mutex::new(BTreeMap::new());

fn marks() -> std::sync::MutexGuard<'static, BTreeMap<String, Mark>> {
    MARKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks `table` (as rules name it) as missing a write, for `reason`.
pub fn mark(table: &str, reason: &str) {
    if table.is_empty() {
        return;
    }
    let mut all = marks();
    let next = all.values().map(|m| m.generation).max().unwrap_or(0) + 1;
    let m = all.entry(table.to_string()).or_insert_with(|| Mark {
        since: SystemTime::now(),
        reason: String::new(),
        writes: 0,
        generation: 0,
    });
    m.reason = reason.to_string();
    m.writes += 1;
    m.generation = next;
    metrics::gauge!("pgbridge_table_needs_repair", "table" => table.to_string()).set(1.0);
    tracing::warn!(
        table,
        reason,
        "the mirror missed a write: the table needs a repair"
    );
}

/// The table's mark, if it has one.
pub fn get(table: &str) -> Option<Mark> {
    marks().get(table).cloned()
}

/// Every marked table and its mark.
pub fn all() -> Vec<(String, Mark)> {
    marks()
        .iter()
        .map(|(t, m)| (t.clone(), m.clone()))
        .collect()
}

/// Clears the table's mark unless it was marked again after `generation`; whether it cleared.
pub fn clear(table: &str, generation: u64) -> bool {
    let mut all = marks();
    match all.get(table) {
        Some(m) if m.generation <= generation => {
            all.remove(table);
            metrics::gauge!("pgbridge_table_needs_repair", "table" => table.to_string()).set(0.0);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_cleared_only_by_a_repair_that_covered_its_last_write() {
        mark("stale_test_a", "MERGE");
        let first = get("stale_test_a").unwrap();
        assert_eq!((first.writes, first.reason.as_str()), (1, "MERGE"));
        mark("stale_test_a", "a CTE");
        let second = get("stale_test_a").unwrap();
        assert_eq!(second.writes, 2);
        assert_eq!(second.since, first.since, "since the first write missed");
        assert!(second.generation > first.generation);
        assert!(
            !clear("stale_test_a", first.generation),
            "marked again since"
        );
        assert!(clear("stale_test_a", second.generation));
        assert_eq!(get("stale_test_a"), None);
        mark("", "no table");
        assert!(all().iter().all(|(t, _)| !t.is_empty()));
    }
}
