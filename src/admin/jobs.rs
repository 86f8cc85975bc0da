//! The jobs endpoints: `POST /api/tables/{source}/backfill` starts a backfill, `GET /api/jobs`
//! and `GET /api/jobs/{id}` show jobs with their progress, `DELETE /api/jobs/{id}` cancels one.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{authorize, problem, AppState};
use crate::migrate::{JobError, Jobs};

/// The body of `POST /api/tables/{source}/backfill` (empty is fine).
#[derive(Debug, Default, Deserialize)]
struct BackfillStart {
    #[serde(default)]
    chunk_rows: Option<i64>,
    #[serde(default)]
    max_rows_per_sec: Option<i64>,
}

/// The jobs of the proxy, or why there are none: no rules, or no secondary.
fn jobs(state: &AppState) -> Result<Arc<Jobs>, Box<Response>> {
    let refused = |message: &str| Box::new(problem(StatusCode::BAD_REQUEST, message.into()));
    let Some(m) = &state.instance.migration else {
        return Err(refused("no rules are loaded: there is nothing to backfill"));
    };
    m.jobs
        .clone()
        .ok_or_else(|| refused("no [secondary] is configured: a backfill needs one to copy into"))
}

/// An error's HTTP status.
fn status_of(e: &JobError) -> StatusCode {
    match e {
        JobError::UnknownTable(_) | JobError::NoJob(_) => StatusCode::NOT_FOUND,
        JobError::NoKey(_) | JobError::NotRows(..) | JobError::Unchecked(_) => StatusCode::CONFLICT,
        JobError::Running(..) => StatusCode::CONFLICT,
        JobError::ChunkRows => StatusCode::BAD_REQUEST,
        JobError::Secondary(_) | JobError::Primary(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn failed(e: JobError) -> Response {
    problem(status_of(&e), e.to_string())
}

pub(super) async fn start_backfill(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(table): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err((code, message)) = authorize(&state, &headers) {
        return problem(code, message);
    }
    let start: BackfillStart = match body.is_empty() {
        true => BackfillStart::default(),
        false => match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return problem(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
        },
    };
    let jobs = match jobs(&state) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    match jobs
        .start_backfill(&table, start.chunk_rows, start.max_rows_per_sec)
        .await
    {
        Ok(id) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "job": id }))).into_response(),
        Err(e) => failed(e),
    }
}

pub(super) async fn list(State(state): State<AppState>) -> Response {
    let jobs = match jobs(&state) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    match jobs.list().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => failed(e),
    }
}

pub(super) async fn get(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let jobs = match jobs(&state) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    match jobs.get(id).await {
        Ok(job) => Json(job).into_response(),
        Err(e) => failed(e),
    }
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    if let Err((code, message)) = authorize(&state, &headers) {
        return problem(code, message);
    }
    let jobs = match jobs(&state) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    match jobs.cancel(id).await {
        Ok(job) => Json(job).into_response(),
        Err(e) => failed(e),
    }
}
