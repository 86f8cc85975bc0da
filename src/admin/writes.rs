//! `PUT /api/tables/{source}/writes`: switch where a table's writes are executed (primary,
//! secondary, or complete), through the write switch's gate and hold (src/writes/switch.rs);
//! the answer is the switch made, or why it was refused (409) or aborted (409, nothing
//! changed).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tracing::error;

use super::{authorize, problem, AppState};
use crate::reads::FlagOptions;
use crate::rules::TableName;
use crate::writes::gate::Evidence;
use crate::writes::switch::{self, Ports, Request, SwitchError};
use crate::writes::Direction;

/// How long a switch holds the table's writes by default.
const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// The body of `PUT /api/tables/{source}/writes`.
#[derive(Debug, Deserialize)]
struct WritesChange {
    target: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    who: Option<String>,
    /// How long the table's new writes may be held while transactions end and the mirror
    /// drains; past it the switch is aborted.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Say what the switch would do and what the gate would say; change nothing.
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn set_writes(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(table): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let token = match authorize(&state, &headers) {
        Ok(name) => name,
        Err((code, message)) => return problem(code, message),
    };
    let change: WritesChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
    };
    let Some(to) = Direction::parse(&change.target) else {
        let message = format!(
            "target must be primary, secondary or complete, not {:?}",
            change.target
        );
        return problem(StatusCode::BAD_REQUEST, message);
    };
    let unknown = || {
        problem(
            StatusCode::NOT_FOUND,
            format!("no rule migrates a table named {table:?}"),
        )
    };
    let Some(m) = &state.instance.migration else {
        return unknown();
    };
    let rules = m.rules.load_full();
    let Some(rule) = TableName::parse(&table).and_then(|t| rules.get(&t).cloned()) else {
        return unknown();
    };
    if let Some(shared) = &m.state {
        if let Err(e) = shared.check_reachable().await {
            return problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
    }
    let config = &state.instance.config;
    let (Some(secondary), Some(mirror), Some(reverse)) =
        (&config.secondary, &m.mirror, &m.writes.reverse)
    else {
        return problem(
            StatusCode::CONFLICT,
            "refused: no [secondary] is configured".into(),
        );
    };
    let source = rule.source.to_string();
    let evidence = jobs_evidence(m, config, &source);
    let request = Request {
        to,
        reason: change.reason.unwrap_or_default(),
        force: change.force,
        who: super::who(&token, change.who),
        timeout: Duration::from_millis(change.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
    };
    let bounds = FlagOptions::from_config(config);
    let ports = Ports {
        primary: &config.primary.url,
        secondary: &secondary.url,
        journal: &mirror.journal,
        applier: &mirror.applier,
        reverse,
        bounds: &bounds,
        agreement: m
            .state
            .as_deref()
            .map(|s| s as &dyn crate::writes::switch::Agreement),
    };
    if change.dry_run {
        return match switch::preview(&m.writes.flags, &rule, &request, evidence, &ports).await {
            Ok(preview) => (StatusCode::OK, Json(preview)).into_response(),
            Err(e) => answer(Err(e), &source),
        };
    }
    let switched = switch::switch(&m.writes.flags, &rule, &request, evidence, &ports).await;
    if let (Ok(_), Some(shared)) = (&switched, &m.state) {
        // Instances started later adopt it (src/state/writes.rs).
        let now = m.writes.flags.load();
        let shared_now = shared
            .publish_writes(&rule.source, now.get(&rule.source), now.remote)
            .await;
        if let Err(e) = shared_now {
            let message = format!(
                "the switch was made on this instance but could not be shared: {e}; run the \
                 same command again to share it"
            );
            error!(table = %source, "{message}");
            return problem(StatusCode::SERVICE_UNAVAILABLE, message);
        }
    }
    answer(switched, &source)
}

/// What the gate learns from the jobs and the mirror's marks: the last backfill and verify,
/// a missed write, the mixed transactions seen.
fn jobs_evidence(
    m: &crate::instance::migration::Migration,
    config: &crate::config::Config,
    source: &str,
) -> Evidence {
    let summary = m
        .jobs
        .as_ref()
        .map(|j| j.table_summary(source))
        .unwrap_or_default();
    Evidence {
        backfill: summary.backfill.map(|b| b.state),
        last_verify: summary.verify.map(|v| (v.clean, v.age_seconds as u64)),
        max_verify_age_secs: config.admin.gate_max_verify_age_secs,
        needs_repair: crate::mirror::stale::get(source).is_some(),
        mixed_transactions: crate::writes::mixed::count(source),
        ..Evidence::default()
    }
}

/// The answer to a switch: the outcome, or why it was refused or aborted (409), or failed.
fn answer(switched: Result<switch::Outcome, SwitchError>, source: &str) -> Response {
    match switched {
        Ok(outcome) => (StatusCode::OK, Json(outcome)).into_response(),
        Err(e @ (SwitchError::Refused(_) | SwitchError::Aborted(_))) => {
            problem(StatusCode::CONFLICT, e.to_string())
        }
        Err(e) => {
            error!(error = %e, table = %source, "write switch not made");
            problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}
