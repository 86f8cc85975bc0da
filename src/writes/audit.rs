//! Write switches in the audit log: one JSON line each (the read switches' log,
//! src/reads/flags/audit.rs, with `"kind": "writes"`), appended and synced before the switch
//! returns, with the gate's evidence at that moment.

use std::path::Path;

use super::gate::Evidence;
use super::switch::Outcome;
use crate::mirror::status::MirrorReport;

/// Appends the switch `o`, judged on `e`, to the log at `path`.
pub fn append(path: &Path, o: &Outcome, e: &Evidence) -> std::io::Result<()> {
    let line = serde_json::json!({
        "ts": o.ts,
        "kind": "writes",
        "table": o.source,
        "from": o.previous.as_str(),
        "to": o.writes.as_str(),
        "reason": o.reason,
        "forced": o.forced,
        "overridden": o.overridden,
        "who": o.who,
        "paused_ms": o.paused_ms,
        "evidence": evidence(e),
    });
    crate::reads::flags::audit::write_line(path, &line)
}

/// The gate's evidence as the audit line and a dry run show it.
pub fn evidence(e: &Evidence) -> serde_json::Value {
    let forward = e.forward.as_ref().map(MirrorReport::gate_evidence);
    serde_json::json!({
        "backfill": e.backfill,
        "last_verify": e.last_verify.map(|(clean, age)| serde_json::json!({"clean": clean, "age_seconds": age})),
        "forward": forward,
        "needs_repair": e.needs_repair,
        "rows_outside_where": e.rows_outside,
        "same_database": e.same_database,
        "two_phase": e.two_phase,
        "mixed_transactions": e.mixed_transactions,
    })
}
