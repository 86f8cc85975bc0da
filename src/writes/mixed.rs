//! Transactions observed writing a migrated table and another table of the primary, counted per
//! migrated table while its writes are mirrored forward: the evidence, before a write switch,
//! of whether the workload has transactions that would span two databases after it (status
//! `tables[].mixed_transactions`, `pgbridge_mixed_transactions_total`, the switch's audit line).

use std::collections::BTreeMap;
use std::sync::Mutex;

static MIXED: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// A transaction that wrote `table` (as rules name it) also wrote another table.
pub fn note(table: &str) {
    *MIXED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(table.to_string())
        .or_default() += 1;
    metrics::counter!("pgbridge_mixed_transactions_total", "table" => table.to_string())
        .increment(1);
}

/// How many such transactions this process saw for `table`.
pub fn count(table: &str) -> u64 {
    MIXED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(table)
        .copied()
        .unwrap_or(0)
}

/// Whether `text` starts with a statement that writes (INSERT, UPDATE, DELETE, MERGE, COPY,
/// TRUNCATE), comments and whitespace aside: how a statement naming no migrated table, which
/// pgbridge does not parse, is told to be a write of another table.
pub fn starts_with_write(text: &str) -> bool {
    let mut rest = text.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            break;
        }
    }
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase();
    matches!(
        word.as_str(),
        "insert" | "update" | "delete" | "merge" | "copy" | "truncate"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_told_by_their_first_word() {
        assert!(starts_with_write(
            "  -- note\n/* x */ INSERT INTO instruments VALUES (1)"
        ));
        assert!(starts_with_write("update t set a = 1"));
        assert!(!starts_with_write("SELECT * FROM t"));
        assert!(!starts_with_write("BEGIN; INSERT INTO t VALUES (1)"));
    }
}
