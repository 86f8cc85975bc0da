//! The admin HTTP API (JSON) and `/metrics`, and the `pgbridge ctl` client.
//!
//! `GET /api/status` and `GET /metrics` are open to whoever reaches `admin_listen`; mutating calls
//! need `Authorization: Bearer <[admin] token>`.
//!
//! - [`status`]: `GET /api/status`.
//! - [`reads`]: `PUT /api/tables/{source}/reads`.
//! - [`jobs`]: `POST /api/tables/{source}/backfill`, `POST /api/verify`, `POST
//!   /api/tables/{source}/repair`, `GET /api/jobs[/{id}]`, `DELETE /api/jobs/{id}`, `GET
//!   /api/jobs/{id}/report.csv`.
//! - [`metrics`]: the Prometheus recorder `GET /metrics` renders.
//! - [`dashboard`]: `GET /`, the page; [`history`]: `GET /api/history`, what it draws over time.
//! - [`ctl`]: `pgbridge ctl`, the client of this API.

mod audit;
pub mod ctl;
mod dashboard;
pub mod history;
pub mod jobs;
pub mod metrics;
pub mod phase;
pub mod reads;
pub mod status;
mod writes;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Json;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tracing::error;

use crate::instance::Instance;

pub use status::{DivergenceStatus, MirrorStatus, Status, TableStatus};

#[derive(Clone)]
struct AppState {
    instance: Arc<Instance>,
    metrics: PrometheusHandle,
    history: Arc<history::History>,
}

/// Serves the admin API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, instance: Arc<Instance>, metrics: PrometheusHandle) {
    let history = Arc::new(history::History::default());
    history.spawn(instance.clone());
    let app = router(AppState {
        instance,
        metrics,
        history,
    });
    if let Err(e) = axum::serve(listener, app).await {
        error!(error = %e, "the admin API stopped");
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .route("/api/history", get(history::history))
        .route("/metrics", get(render_metrics))
        .route("/api/status", get(status::status))
        .route("/api/audit", get(audit::audit))
        .route("/api/tables/{source}/reads", put(reads::set_reads))
        .route("/api/tables/{source}/writes", put(writes::set_writes))
        .route("/api/tables/{source}/backfill", post(jobs::start_backfill))
        .route("/api/verify", post(jobs::start_verify))
        .route("/api/tables/{source}/repair", post(jobs::start_repair))
        .route("/api/jobs", get(jobs::list))
        .route("/api/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/api/jobs/{id}/report.csv", get(jobs::report))
        .with_state(state)
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    if let Some(m) = &state.instance.migration {
        m.writes.sample_metrics(&m.rules.load());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Who made a change, as the token tells: the name of a named token (`[admin.tokens]`), or
/// `None` for the unnamed `[admin] token`.
type TokenName = Option<String>;

/// Mutating calls need a configured token; without one configured they are refused. The
/// answer is the token's name, when it has one.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<TokenName, (StatusCode, String)> {
    let admin = &state.instance.config.admin;
    if admin.token.is_none() && admin.tokens.is_empty() {
        return Err((
            StatusCode::UNAUTHORIZED,
            "set [admin] token in the config to allow changes".into(),
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Every token is compared, so the time taken tells nothing of which one matched.
    let mut found = None;
    for (name, token) in &admin.tokens {
        if bearer_matches(token, given) && found.is_none() {
            found = Some(Some(name.clone()));
        }
    }
    if let Some(token) = &admin.token {
        if bearer_matches(token, given) && found.is_none() {
            found = Some(None);
        }
    }
    found.ok_or((
        StatusCode::UNAUTHORIZED,
        "missing or wrong admin token".into(),
    ))
}

/// The `who` of an audit line: the token's name when it has one (the client's claim after it,
/// when it makes one), else what the client says, else `admin api`.
fn who(token: &TokenName, claimed: Option<String>) -> String {
    match (token, claimed) {
        (Some(name), Some(c)) if &c != name => format!("{name} ({c})"),
        (Some(name), _) => name.clone(),
        (None, Some(c)) => c,
        (None, None) => "admin api".to_string(),
    }
}

/// Whether an Authorization header value carries `Bearer <token>`. The comparison takes as long
/// whatever the header holds (SHA-256 digests compared in constant time), so its timing tells
/// nothing of the token, not even its length.
fn bearer_matches(token: &str, authorization: Option<&str>) -> bool {
    let Some(given) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    digest(given).as_ref().ct_eq(digest(token).as_ref()).into()
}

fn problem(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::{bearer_matches, who};

    #[test]
    fn a_named_token_is_who_made_the_change() {
        let alice = Some("alice".to_string());
        assert_eq!(who(&alice, Some("root@ctl".into())), "alice (root@ctl)");
        assert_eq!(who(&alice, None), "alice");
        assert_eq!(who(&None, Some("root@ctl".into())), "root@ctl");
        assert_eq!(who(&None, None), "admin api");
    }

    #[test]
    fn only_the_exact_bearer_token_authorizes() {
        assert!(bearer_matches("s3cret", Some("Bearer s3cret")));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret ",
            "Bearer S3cret",
            "s3cret",
            "Basic s3cret",
            "",
        ] {
            assert!(!bearer_matches("s3cret", Some(wrong)), "{wrong:?}");
        }
        assert!(!bearer_matches("s3cret", None));
    }
}
