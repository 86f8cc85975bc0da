//! The audit log of read switches: one JSON line per switch (when, which table, from and to,
//! why, who, whether forced and what the force overrode), appended and synced to disk before
//! the switch takes effect (docs/DESIGN.md, principle 10).

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::{FlagError, TableState};
use crate::rules::ReadSource;

/// One line of the audit log.
#[derive(Serialize)]
struct AuditLine<'a> {
    ts: &'a str,
    table: String,
    from: &'static str,
    from_percent: u8,
    to: &'static str,
    percent: u8,
    reason: &'a str,
    forced: bool,
    overridden: &'a [String],
    who: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    evidence: Option<&'a serde_json::Value>,
}

/// Appends the switch `s` to the log at `path` (its directory made when missing) and syncs it.
pub(super) fn append(path: &Path, s: &TableState) -> Result<(), FlagError> {
    let line = AuditLine {
        ts: &s.ts,
        table: s.source.clone(),
        from: source_word(&s.previous),
        from_percent: s.previous_percent,
        to: source_word(&s.reads),
        percent: s.percent,
        reason: &s.reason,
        forced: s.forced,
        overridden: &s.overridden,
        who: &s.who,
        evidence: s.evidence.as_ref(),
    };
    write_line(path, &line).map_err(|source| FlagError::Audit {
        path: path.to_path_buf(),
        source,
    })
}

/// Appends `line` as one JSON line to the audit log at `path` (its directory made when missing)
/// and syncs it, then queues it for the shared state (src/state/audit.rs); the write switch's
/// lines go through here too (src/writes/audit.rs).
pub(crate) fn write_line<T: Serialize>(path: &Path, line: &T) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    queue(text.trim_end());
    Ok(())
}

/// How many lines wait for the shared state at most.
const QUEUED_AT_MOST: usize = 10_000;

/// Audit lines not yet written to the shared state (src/state/audit.rs).
static QUEUE: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

fn queue(line: &str) {
    let mut q = QUEUE.lock().unwrap_or_else(|e| e.into_inner());
    if q.len() == QUEUED_AT_MOST {
        q.pop_front();
    }
    q.push_back(line.to_string());
}

/// The oldest line not yet in the shared state.
pub(crate) fn queued_front() -> Option<String> {
    QUEUE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .front()
        .cloned()
}

/// The oldest line is in the shared state now.
pub(crate) fn written_front() {
    QUEUE.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
}

/// A read source's word in the log, from the state's spelling of it.
fn source_word(s: &str) -> &'static str {
    ReadSource::parse(s).map_or("primary", ReadSource::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch(from: &str, to: &str, forced: bool) -> TableState {
        TableState {
            source: "derived_data_bars".into(),
            target: "data_bars".into(),
            reads: to.into(),
            percent: 100,
            previous: from.into(),
            previous_percent: 100,
            changed: true,
            forced,
            overridden: if forced {
                vec!["2 parked transactions".into()]
            } else {
                Vec::new()
            },
            reason: "go".into(),
            who: "op".into(),
            ts: "2026-12-01T00:00:00Z".into(),
            evidence: None,
        }
    }

    #[test]
    fn each_switch_is_one_line_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("made/audit.jsonl");
        append(&path, &switch("primary", "shadow", false)).unwrap();
        append(&path, &switch("shadow", "secondary", true)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1],
            serde_json::json!({
                "ts": "2026-12-01T00:00:00Z",
                "table": "derived_data_bars",
                "from": "shadow",
                "from_percent": 100,
                "to": "secondary",
                "percent": 100,
                "reason": "go",
                "forced": true,
                "overridden": ["2 parked transactions"],
                "who": "op",
            })
        );
        assert_eq!(lines[0]["from"], "primary");
    }

    #[test]
    fn an_unwritable_log_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the log should be.
        let e = append(dir.path(), &switch("primary", "shadow", false)).unwrap_err();
        let FlagError::Audit { path, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(path, dir.path());
        assert!(
            e.to_string().starts_with("cannot write the audit log"),
            "{e}"
        );
    }
}
