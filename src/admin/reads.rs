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
use crate::rules::{ReadSource, TableName};

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
    /// Say what the switch would do and what the gate would say; change nothing.
    #[serde(default)]
    dry_run: bool,
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
    let token = match authorize(&state, &headers) {
        Ok(name) => name,
        Err((code, message)) => return problem(code, message),
    };
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
    let who = super::who(&token, change.who);
    let (force, percent) = (change.force, change.percent);
    // Shared with the other instances (src/state/mod.rs): refused while the state database
    // is unreachable, so that no instance switches alone.
    let known = TableName::parse(&table).is_some_and(|t| m.reads.load().get(&t).is_some());
    if !known {
        let message = format!("no rule migrates a table named {table:?}");
        return problem(StatusCode::NOT_FOUND, message);
    }
    if change.dry_run {
        return match flags.preview(&table, to, percent, force) {
            Ok(preview) => (StatusCode::OK, Json(preview)).into_response(),
            Err(e) => flag_error(e),
        };
    }
    let _changing = match &m.state {
        Some(shared) => match shared.check_reachable().await {
            Ok(()) => Some(shared.changing.lock().await),
            Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        None => None,
    };
    // More of the reads on the secondary is agreed by every live instance first (unless
    // forced past the gate): each one's own mirror must be ready.
    if let (Some(shared), false) = (&m.state, force) {
        let name = TableName::parse(&table).expect("a table the flags know");
        let now = m.reads.load();
        let (from, from_percent) = (now.get(&name), now.percent(&name).unwrap_or(100));
        let more = to == ReadSource::Secondary
            && (from != Some(ReadSource::Secondary) || percent > from_percent);
        if more {
            if let Err(why) = shared.agree_reads(&name).await {
                return problem(StatusCode::CONFLICT, format!("refused: {why}"));
            }
        }
    }
    // The audit line is written and synced before the switch: off the runtime's threads.
    let local = flags.clone();
    let set =
        tokio::task::spawn_blocking(move || local.set(&table, to, percent, &reason, &who, force));
    let made = match set.await {
        Ok(Ok(made)) => made,
        Ok(Err(e)) => return flag_error(e),
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let (Some(shared), true) = (&m.state, made.changed) {
        let name = TableName::parse(&made.source).expect("a table the flags know");
        let word = |w: &str| ReadSource::parse(w).expect("a read source the flags wrote");
        let published = shared
            .publish_reads(&name, word(&made.reads), made.percent)
            .await;
        if let Err(e) = published {
            // Not shared: not made here either.
            flags.apply_shared(&name, word(&made.previous), made.previous_percent);
            error!(error = %e, table = %name, "read switch undone: it could not be shared");
            return problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
    }
    (StatusCode::OK, Json(made)).into_response()
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
