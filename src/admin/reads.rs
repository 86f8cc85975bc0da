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
        return problem(
            StatusCode::BAD_REQUEST,
            format!(
                "source must be primary, shadow or secondary, not {:?}",
                change.source
            ),
        );
    };
    let Some(m) = &state.instance.migration else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no rule migrates a table named {table:?}"),
        );
    };
    let flags = m.reads.clone();
    let reason = change.reason.unwrap_or_default();
    let who = change.who.unwrap_or_else(|| "admin api".into());
    let force = change.force;
    // The audit line is written and synced before the switch: off the runtime's threads.
    let set = tokio::task::spawn_blocking(move || flags.set(&table, to, &reason, &who, force));
    match set.await {
        Ok(Ok(state)) => (StatusCode::OK, Json(state)).into_response(),
        Ok(Err(e @ FlagError::UnknownTable(_))) => problem(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e @ FlagError::Refused(_))) => problem(StatusCode::CONFLICT, e.to_string()),
        Ok(Err(e @ FlagError::Audit { .. })) => {
            error!(error = %e, "read switch not made");
            problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
