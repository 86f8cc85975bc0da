//! The admin HTTP API (JSON) and `/metrics`, and the `pgbridge ctl` client.
//!
//! `GET /api/status` and `GET /metrics` are open to whoever reaches `admin_listen`; mutating calls
//! need `Authorization: Bearer <[admin] token>`.

pub mod ctl;
pub mod metrics;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Json;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tracing::error;

use crate::reads::FlagError;
use crate::server::Proxy;

#[derive(Clone)]
struct AppState {
    proxy: Arc<Proxy>,
    metrics: PrometheusHandle,
}

/// Serves the admin API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, metrics: PrometheusHandle) {
    let app = router(AppState { proxy, metrics });
    if let Err(e) = axum::serve(listener, app).await {
        error!(error = %e, "the admin API stopped");
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/api/status", get(status))
        .route("/api/tables/{source}/reads", put(set_reads))
        .with_state(state)
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /api/status`, as CONTRACT.md gives it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub tables: Vec<TableStatus>,
    pub mirror: MirrorStatus,
    pub divergences: DivergenceStatus,
    pub sessions: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TableStatus {
    pub source: String,
    pub target: String,
    pub reads: String,
    pub mirror: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MirrorStatus {
    pub journal_seq: u64,
    pub applied_seq: u64,
    pub lag_seconds: f64,
    pub parked: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DivergenceStatus {
    pub total: u64,
    pub by_kind: std::collections::BTreeMap<String, u64>,
}

async fn status(State(state): State<AppState>) -> Json<Status> {
    let proxy = &state.proxy;
    let mut status = Status {
        tables: Vec::new(),
        mirror: MirrorStatus::default(),
        divergences: DivergenceStatus::default(),
        sessions: proxy.cancels.len() as u64,
    };
    if let Some(m) = &proxy.migration {
        let flags = m.reads.load();
        status.tables = flags
            .rules()
            .rules()
            .iter()
            .map(|r| TableStatus {
                source: r.source.to_string(),
                target: r.target.to_string(),
                reads: flags.get(&r.source).unwrap_or(r.reads).as_str().to_string(),
                mirror: r.mirror.as_str().to_string(),
            })
            .collect();
        status.divergences = m.recorder.status();
        if let Some(mirror) = &m.mirror {
            status.mirror = mirror.applier.report().to_admin();
        }
    }
    Json(status)
}

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

async fn set_reads(
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
    let Some(to) = crate::reads::parse_source(&change.source) else {
        return problem(
            StatusCode::BAD_REQUEST,
            format!(
                "source must be primary, shadow or secondary, not {:?}",
                change.source
            ),
        );
    };
    let Some(m) = &state.proxy.migration else {
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

/// Mutating calls need the configured token; without one configured they are refused.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let Some(token) = state.proxy.config.admin.token.as_deref() else {
        return Err((
            StatusCode::UNAUTHORIZED,
            "set [admin] token in the config to allow changes".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given != Some(token) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token".into(),
        ));
    }
    Ok(())
}

fn problem(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Logs to stderr; `RUST_LOG` (or `PGBRIDGE_LOG`) sets the filter, `info` by default.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("PGBRIDGE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
