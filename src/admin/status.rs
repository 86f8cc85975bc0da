//! `GET /api/status`: the tables, the mirror, the divergences and the sessions, as JSON. The
//! mirror and the recorder keep their own figures; this turns them into the API's shape.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::divergence::DivergenceCounts;
use crate::migrate::summary::{BackfillSummary, VerifySummary};
use crate::mirror::status::MirrorReport;

/// `GET /api/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub tables: Vec<TableStatus>,
    pub mirror: MirrorStatus,
    pub divergences: DivergenceStatus,
    pub sessions: u64,
    /// The reverse mirror (target to legacy table, for tables whose writes are on the
    /// secondary): applied, queued, lag_seconds, connected, last_error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse: Option<serde_json::Value>,
    /// The instances sharing the state (src/state/mod.rs), this one included.
    #[serde(default)]
    pub instances: Vec<crate::state::InstanceView>,
    /// The shared state's database: this instance's name, whether it is reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::state::StateReport>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TableStatus {
    pub source: String,
    pub target: String,
    pub reads: String,
    /// The share of sessions whose reads go to `reads` (the others' stay on the primary).
    pub reads_percent: u8,
    pub mirror: String,
    /// Where its writes are executed: primary, secondary or complete (src/writes/mod.rs).
    #[serde(default)]
    pub writes: String,
    /// Transactions seen writing this table and another table of the primary (they would
    /// span two databases once its writes moved to a secondary of its own).
    #[serde(default)]
    pub mixed_transactions: u64,
    /// The divergences recorded for this table since start, by kind.
    #[serde(default)]
    pub divergences: std::collections::BTreeMap<String, u64>,
    /// The table's backfill running in this process, or its last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillSummary>,
    /// The table's last finished verify, and how many in a row were clean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verify: Option<VerifySummary>,
    /// Set while the mirror is known to have missed a write to the table (a MERGE, a write in
    /// a CTE or a function): a verify and repair are due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_repair: Option<serde_json::Value>,
    /// Its phase in the migration (src/admin/phase.rs), and the next step with its command.
    #[serde(default)]
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<super::phase::Next>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MirrorStatus {
    pub journal_seq: u64,
    pub applied_seq: u64,
    pub lag_seconds: f64,
    pub parked: u64,
    /// The applier is connected to the secondary (it retries while not).
    #[serde(default)]
    pub connected: bool,
    /// The applier halted on a transaction the secondary refuses (`on_error = "halt"`).
    #[serde(default)]
    pub halted: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DivergenceStatus {
    pub total: u64,
    pub by_kind: std::collections::BTreeMap<String, u64>,
}

pub(super) async fn status(State(state): State<AppState>) -> Json<Status> {
    let proxy = &state.instance;
    let mut status = Status {
        tables: Vec::new(),
        mirror: MirrorStatus::default(),
        divergences: DivergenceStatus::default(),
        sessions: proxy.sessions() as u64,
        reverse: None,
        instances: Vec::new(),
        state: None,
    };
    if let Some(m) = &proxy.migration {
        let flags = m.reads.load();
        let mut divergences = m.recorder.by_table();
        status.tables = flags
            .rules()
            .rules()
            .iter()
            .map(|r| {
                let source = r.source.to_string();
                let jobs = m.jobs.as_ref().map(|j| j.table_summary(&source));
                let mut jobs = jobs.unwrap_or_default();
                if let Some(v) = &mut jobs.verify {
                    let max_age = proxy.config.admin.gate_max_verify_age_secs as f64;
                    v.current = v.clean && v.age_seconds <= max_age;
                }
                let needs_repair = crate::mirror::stale::get(&source)
                    .and_then(|mark| serde_json::to_value(mark).ok());
                let reads = flags.get(&r.source).unwrap_or(r.reads).as_str();
                let reads_percent = flags.percent(&r.source).unwrap_or(100);
                let writes = m.writes.flags.load().get(&r.source).as_str();
                let (phase, next) = super::phase::phase(&super::phase::Facts {
                    table: &source,
                    reads,
                    percent: reads_percent,
                    writes,
                    backfill: jobs.backfill.as_ref().map(|b| b.state.as_str()),
                    verify: jobs.verify.as_ref().map(|v| (v.clean, v.current)),
                    needs_repair: needs_repair.is_some(),
                });
                TableStatus {
                    phase: phase.to_string(),
                    next,
                    target: r.target.to_string(),
                    reads: reads.to_string(),
                    reads_percent,
                    mirror: r.mirror.as_str().to_string(),
                    writes: writes.to_string(),
                    mixed_transactions: crate::writes::mixed::count(&source),
                    divergences: divergences.remove(&source).unwrap_or_default(),
                    backfill: jobs.backfill,
                    last_verify: jobs.verify,
                    needs_repair,
                    source,
                }
            })
            .collect();
        status.divergences = DivergenceStatus::from(m.recorder.counts());
        if let Some(mirror) = &m.mirror {
            status.mirror = MirrorStatus::from(&mirror.applier.report());
        }
        if let Some(shared) = &m.state {
            status.instances = shared.instances();
            status.state = Some(shared.report());
        }
        status.reverse = m
            .writes
            .reverse
            .as_ref()
            .and_then(|r| serde_json::to_value(r.stats().report()).ok());
    }
    Json(status)
}

impl From<&MirrorReport> for MirrorStatus {
    fn from(r: &MirrorReport) -> Self {
        MirrorStatus {
            journal_seq: r.journal_seq,
            applied_seq: r.applied_seq,
            lag_seconds: r.lag_seconds,
            parked: r.parked,
            connected: r.connected,
            halted: r.halted,
        }
    }
}

impl From<DivergenceCounts> for DivergenceStatus {
    fn from(c: DivergenceCounts) -> Self {
        DivergenceStatus {
            total: c.total,
            by_kind: c.by_kind,
        }
    }
}
