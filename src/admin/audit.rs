//! `GET /api/audit[?table=T&limit=N]`: the audit trail, newest first. With a shared state
//! (src/state/audit.rs) it is every instance's; without one, or while the state database is
//! unreachable, this instance's own log file. Each entry is its audit line with `kind`
//! (`reads` for the read switches' lines, which have none) and `instance`.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::AppState;

/// At most this many entries unless `limit` says otherwise.
const DEFAULT_LIMIT: i64 = 100;

#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    table: Option<String>,
    limit: Option<i64>,
}

pub(super) async fn audit(State(state): State<AppState>, Query(q): Query<AuditQuery>) -> Response {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, 10_000);
    let table = q.table.as_deref().filter(|t| !t.is_empty());
    let shared = state
        .instance
        .migration
        .as_ref()
        .and_then(|m| m.state.as_ref());
    if let Some(shared) = shared {
        if let Ok(rows) = shared.audit(table, limit).await {
            let entries: Vec<_> = rows
                .into_iter()
                .map(|(_, instance, line)| entry(line, &instance))
                .collect();
            return Json(serde_json::json!({"source": "state", "entries": entries}))
                .into_response();
        }
    }
    let config = &state.instance.config;
    let (entries, skipped) = from_file(&config.admin.audit_log, table, limit as usize);
    let instance = config.instance_name();
    let entries: Vec<_> = entries.into_iter().map(|l| entry(l, &instance)).collect();
    Json(serde_json::json!({"source": "file", "entries": entries, "skipped": skipped}))
        .into_response()
}

/// An audit line as an entry: its `kind` and `instance` filled in.
fn entry(mut line: serde_json::Value, instance: &str) -> serde_json::Value {
    if let Some(o) = line.as_object_mut() {
        o.entry("kind").or_insert_with(|| "reads".into());
        o.entry("instance").or_insert_with(|| instance.into());
    }
    line
}

/// The log file's lines of `table` (all when `None`), newest first, at most `limit`; and how
/// many lines were not JSON.
fn from_file(
    path: &std::path::Path,
    table: Option<&str>,
    limit: usize,
) -> (Vec<serde_json::Value>, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut skipped = 0;
    let mut out = Vec::new();
    for line in text.lines().rev().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            skipped += 1;
            continue;
        };
        if table.is_some_and(|t| v["table"].as_str() != Some(t)) {
            continue;
        }
        if out.len() < limit {
            out.push(v);
        }
    }
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_reads_newest_first_by_table_and_skips_what_is_not_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(
            &path,
            "{\"table\":\"a\",\"to\":\"shadow\"}\nnot json\n{\"table\":\"b\",\"kind\":\"writes\"}\n{\"table\":\"a\",\"to\":\"secondary\"}\n",
        )
        .unwrap();
        let (all, skipped) = from_file(&path, None, 10);
        assert_eq!(skipped, 1);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0]["to"], "secondary");
        let (a, _) = from_file(&path, Some("a"), 1);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0]["to"], "secondary");
        assert_eq!(entry(all[1].clone(), "x")["kind"], "writes");
        assert_eq!(entry(all[0].clone(), "x")["kind"], "reads");
        assert_eq!(entry(all[0].clone(), "x")["instance"], "x");
        assert_eq!(from_file(&dir.path().join("none"), None, 5).0.len(), 0);
    }
}
