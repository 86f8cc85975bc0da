//! The jobs endpoints: `POST /api/tables/{source}/backfill` starts a backfill, `POST
//! /api/verify` a verify, `POST /api/tables/{source}/repair` a repair; `GET /api/jobs` and `GET
//! /api/jobs/{id}` show jobs with their progress and result, `DELETE /api/jobs/{id}` cancels one.

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
    /// Say what it would do, and start nothing.
    #[serde(default)]
    dry_run: bool,
    /// Who asks, for the audit log (`pgbridge ctl` sends `$USER@ctl`).
    #[serde(default)]
    who: Option<String>,
    #[serde(default)]
    chunk_rows: Option<i64>,
    #[serde(default)]
    max_rows_per_sec: Option<i64>,
}

/// The body of `POST /api/verify` (empty: every table).
#[derive(Debug, Default, Deserialize)]
struct VerifyStart {
    #[serde(default)]
    dry_run: bool,
    /// Who asks, for the audit log (`pgbridge ctl` sends `$USER@ctl`).
    #[serde(default)]
    who: Option<String>,
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    chunk_rows: Option<i64>,
    #[serde(default)]
    max_rows_per_sec: Option<i64>,
}

/// The body of `POST /api/tables/{source}/repair` (empty: the table's last verify).
#[derive(Debug, Default, Deserialize)]
struct RepairStart {
    #[serde(default)]
    dry_run: bool,
    /// Who asks, for the audit log (`pgbridge ctl` sends `$USER@ctl`).
    #[serde(default)]
    who: Option<String>,
    #[serde(default)]
    verify: Option<i64>,
}

/// The jobs of the proxy, or why there are none: no rules, or no secondary.
fn jobs(state: &AppState) -> Result<Arc<Jobs>, Box<Response>> {
    let refused = |message: &str| Box::new(problem(StatusCode::BAD_REQUEST, message.into()));
    let Some(m) = &state.instance.migration else {
        return Err(refused("no rules are loaded: no table has jobs"));
    };
    m.jobs
        .clone()
        .ok_or_else(|| refused("no [secondary] is configured: jobs need one"))
}

/// An error's HTTP status.
fn status_of(e: &JobError) -> StatusCode {
    match e {
        JobError::UnknownTable(_) | JobError::NoJob(_) => StatusCode::NOT_FOUND,
        JobError::NoKey(_)
        | JobError::VerifyNoKey(_)
        | JobError::NotRows(..)
        | JobError::Unchecked(_)
        | JobError::NoVerify(..) => StatusCode::CONFLICT,
        JobError::Running(..) | JobError::Authority(_) => StatusCode::CONFLICT,
        JobError::ChunkRows => StatusCode::BAD_REQUEST,
        JobError::Secondary(_) | JobError::Primary(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn failed(e: JobError) -> Response {
    problem(status_of(&e), e.to_string())
}

/// A mutating call's body, authorized and parsed (empty is the default).
fn body_of<T: Default + serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Arc<Jobs>, T, super::TokenName), Box<Response>> {
    let token =
        authorize(state, headers).map_err(|(code, message)| Box::new(problem(code, message)))?;
    let parsed = match body.is_empty() {
        true => T::default(),
        false => serde_json::from_slice(body).map_err(|e| {
            Box::new(problem(
                StatusCode::BAD_REQUEST,
                format!("invalid body: {e}"),
            ))
        })?,
    };
    Ok((jobs(state)?, parsed, token))
}

/// The answer to a dry run: 200 and what the job would do, or the refusal a start would get.
fn planned(result: Result<crate::migrate::JobPlan, JobError>) -> Response {
    match result {
        Ok(plan) => (StatusCode::OK, Json(plan)).into_response(),
        Err(e) => failed(e),
    }
}

/// The answer to a start: 202 and the job, its audit line written; or why not.
fn started(state: &AppState, result: Result<i64, JobError>, line: Audit<'_>) -> Response {
    match result {
        Ok(id) => {
            audit(state, "start", id, line);
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "job": id }))).into_response()
        }
        Err(e) => failed(e),
    }
}

/// What a job's audit line says besides its action and id: its kind and tables, who asked,
/// and what was asked.
struct Audit<'a> {
    kind: &'a str,
    table: String,
    who: String,
    params: serde_json::Value,
}

/// Appends a job's audit line (`"kind": "job"`): started or cancelled, by whom. A line that
/// cannot be written is logged; the job goes on, as it is resumable and visible in the jobs.
fn audit(state: &AppState, action: &str, id: i64, a: Audit<'_>) {
    let line = serde_json::json!({
        "ts": crate::divergence::record::rfc3339(std::time::SystemTime::now()),
        "kind": "job",
        "action": action,
        "job": id,
        "job_kind": a.kind,
        "table": a.table,
        "who": a.who,
        "params": a.params,
    });
    let path = &state.instance.config.admin.audit_log;
    if let Err(e) = crate::reads::flags::audit::write_line(path, &line) {
        tracing::error!(error = %e, job = id, "the job's audit line was not written");
    }
}

pub(super) async fn start_backfill(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(table): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (jobs, start, token) = match body_of::<BackfillStart>(&state, &headers, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if start.dry_run {
        return planned(jobs.plan_backfill(&table, start.chunk_rows).await);
    }
    let line = Audit {
        kind: "backfill",
        table: table.clone(),
        who: super::who(&token, start.who),
        params: serde_json::json!({
            "chunk_rows": start.chunk_rows, "max_rows_per_sec": start.max_rows_per_sec,
        }),
    };
    let result = jobs
        .start_backfill(&table, start.chunk_rows, start.max_rows_per_sec)
        .await;
    started(&state, result, line)
}

pub(super) async fn start_verify(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (jobs, start, token) = match body_of::<VerifyStart>(&state, &headers, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if start.dry_run {
        return planned(jobs.plan_verify(&start.tables).await);
    }
    let line = Audit {
        kind: "verify",
        table: start.tables.join(","),
        who: super::who(&token, start.who),
        params: serde_json::json!({
            "tables": start.tables, "chunk_rows": start.chunk_rows,
            "max_rows_per_sec": start.max_rows_per_sec,
        }),
    };
    let result = jobs
        .start_verify(&start.tables, start.chunk_rows, start.max_rows_per_sec)
        .await;
    started(&state, result, line)
}

pub(super) async fn start_repair(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(table): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (jobs, start, token) = match body_of::<RepairStart>(&state, &headers, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if start.dry_run {
        return planned(jobs.plan_repair(&table, start.verify).await);
    }
    let line = Audit {
        kind: "repair",
        table: table.clone(),
        who: super::who(&token, start.who),
        params: serde_json::json!({ "verify": start.verify }),
    };
    let result = jobs.start_repair(&table, start.verify).await;
    started(&state, result, line)
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
    let token = match authorize(&state, &headers) {
        Ok(name) => name,
        Err((code, message)) => return problem(code, message),
    };
    let jobs = match jobs(&state) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    match jobs.cancel(id).await {
        Ok(job) => {
            let line = Audit {
                kind: &job.row.kind,
                table: job.row.table.clone(),
                who: super::who(&token, None),
                params: serde_json::Value::Null,
            };
            audit(&state, "cancel", id, line);
            Json(job).into_response()
        }
        Err(e) => failed(e),
    }
}

/// `GET /api/jobs/{id}/report.csv`: a verify's reconciliation report, every table's rows.
pub(super) async fn report(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let jobs = match jobs(&state) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    let job = match jobs.get(id).await {
        Ok(job) => job,
        Err(e) => return failed(e),
    };
    if job.row.kind != "verify" {
        let message = format!("job {id} is a {}: only a verify has a report", job.row.kind);
        return problem(StatusCode::NOT_FOUND, message);
    }
    let Some(result) = &job.row.result else {
        let message = format!(
            "verify job {id} is {}: its report is written when it is done",
            job.row.state
        );
        return problem(StatusCode::CONFLICT, message);
    };
    let rows: Vec<crate::migrate::reconcile::ReportRow> = result["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["report"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| serde_json::from_value(r).ok())
        .collect();
    let csv = crate::migrate::reconcile::csv(&rows);
    (
        [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        csv,
    )
        .into_response()
}
