//! `PUT /api/tables/{source}/reads`: switch where a table's reads are served, through the
//! safety gate; the answer is the table's new state, or why the switch was refused.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tracing::error;

use super::{authorize, problem, AppState};
use crate::reads::FlagError;

/// The body of `PUT /api/tables/{source}/reads`.
#[derive(Debug, Deserialize)]
struct ReadsChange {
    source: String,
    /// The share of sessions (1 to 100) whose reads go to `source`.
    #[serde(default = "all")]
    percent: u8,
    #[serde(default)]
    reason: Option<String>,
    /// Override the safety gate (a switch to `secondary` while the mirror lags or divergences
    /// are unresolved).
    #[serde(default)]
    force: bool,
    /// Who asks, for the audit log (`pgbridge ctl` sends `$USER@host`).
    #[serde(default)]
    who: Option<String>,
}

fn all() -> u8 {
    100
}

pub(super) async fn set_reads(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(table): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err((code, message)) = authorize(&state, &headers) {
        return problem(code, message);
    }
    let change: ReadsChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
    };
    let Some(to) = crate::rules::ReadSource::parse(&change.source) else {
        let message = format!(
            "source must be primary, shadow or secondary, not {:?}",
            change.source
        );
        return problem(StatusCode::BAD_REQUEST, message);
    };
    let Some(m) = &state.instance.migration else {
        let message = format!("no rule migrates a table named {table:?}");
        return problem(StatusCode::NOT_FOUND, message);
    };
    let flags = m.reads.clone();
    let reason = change.reason.unwrap_or_default();
    let who = change.who.unwrap_or_else(|| "admin api".into());
    let (force, percent) = (change.force, change.percent);
    // The audit line is written and synced before the switch: off the runtime's threads.
    let set =
        tokio::task::spawn_blocking(move || flags.set(&table, to, percent, &reason, &who, force));
    match set.await {
        Ok(Ok(state)) => (StatusCode::OK, Json(state)).into_response(),
        Ok(Err(e)) => flag_error(e),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The answer to a switch the flags did not make.
fn flag_error(e: FlagError) -> Response {
    let code = match &e {
        FlagError::UnknownTable(_) => StatusCode::NOT_FOUND,
        FlagError::Refused(_) => StatusCode::CONFLICT,
        FlagError::Percent(_) => StatusCode::BAD_REQUEST,
        FlagError::Audit { .. } => {
            error!(error = %e, "read switch not made");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    problem(code, e.to_string())
}
