//! `GET /`: the dashboard, one read-only page whose assets are compiled into the binary (no
//! CDN: operators run pgbridge on closed networks). The page (src/admin/dashboard/index.html)
//! polls `/api/status`, `/api/jobs`, `/api/audit` and `/api/history` of the instance that
//! served it and draws each table's phase, flags, lag, divergences, jobs, last verify and
//! reconciliation, the audit trail and the instances. It changes nothing: changes stay with
//! `ctl` and the API and their token.
//!
//! Every asset is sent with a Content-Security-Policy that allows only this origin's scripts,
//! styles and API, and forbids framing.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// What the page may load and from where: this origin only; no inline script, no frames.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for text in [INDEX, SCRIPT, STYLE] {
            // The SVG namespace is a name, not an address anything is loaded from.
            let text = text.replace("'http://www.w3.org/2000/svg'", "");
            for outside in [
                "http://",
                "https://",
                "src=\"//",
                "href=\"//",
                "url(",
                "@import",
            ] {
                assert!(!text.contains(outside), "{outside} in an asset");
            }
        }
        // Only the two assets, by path of this origin; no inline script.
        assert!(INDEX.contains("<script src=\"/dashboard.js\" defer></script>"));
        assert!(INDEX.contains("href=\"/dashboard.css\""));
        assert_eq!(INDEX.matches("<script").count(), 1);
    }
}
