//! `pgbridge ctl`: the admin API from the command line.
//!
//! Exit codes: 0 done, 1 refused (bad value, wrong token, unknown table, a safety gate), 2 the
//! admin API could not be reached.

use std::time::Duration;

use reqwest::{Client, Method, StatusCode};

use super::Status;
use crate::reads::TableState;
use crate::CliError;

/// `pgbridge ctl status`: prints the state of a running proxy.
pub fn status(admin: &str, token: Option<&str>) -> Result<(), CliError> {
    let body = call(admin, token, Method::GET, "/api/status", None)?;
    let status: Status = serde_json::from_str(&body).map_err(|e| {
        CliError::unreachable(format!("{admin} did not answer as pgbridge does: {e}"))
    })?;
    print!("{}", render(&status));
    Ok(())
}

/// `pgbridge ctl reads TABLE SOURCE [--reason TEXT] [--force]`: prints the new state.
pub fn set_reads(
    admin: &str,
    token: Option<&str>,
    table: &str,
    source: &str,
    reason: Option<&str>,
    force: bool,
) -> Result<(), CliError> {
    let path = format!("/api/tables/{}/reads", encode_segment(table));
    let who = format!(
        "{}@ctl",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let body = serde_json::json!({
        "source": source, "reason": reason, "force": force, "who": who,
    });
    let answer = call(admin, token, Method::PUT, &path, Some(body))?;
    match serde_json::from_str::<TableState>(&answer) {
        Ok(state) => print!("{}", render_state(&state)),
        Err(_) => println!("{table}: reads now served by {source}\n{answer}"),
    }
    Ok(())
}

fn render_state(s: &TableState) -> String {
    let mut out = if s.changed {
        format!(
            "{}: reads now served by {} (was {})\n",
            s.source, s.reads, s.previous
        )
    } else {
        format!("{}: reads already served by {}\n", s.source, s.reads)
    };
    if s.forced && !s.overridden.is_empty() {
        out.push_str(&format!("forced past: {}\n", s.overridden.join("; ")));
    }
    out
}

fn render(s: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!("sessions: {}\n", s.sessions));
    out.push_str(&format!(
        "mirror: journal {} applied {} lag {:.1}s parked {}\n",
        s.mirror.journal_seq, s.mirror.applied_seq, s.mirror.lag_seconds, s.mirror.parked
    ));
    out.push_str(&format!("divergences: {}", s.divergences.total));
    for (kind, n) in &s.divergences.by_kind {
        out.push_str(&format!(" {kind}={n}"));
    }
    out.push('\n');
    if s.tables.is_empty() {
        out.push_str("tables: none migrated\n");
    } else {
        out.push_str(&format!(
            "{:<32} {:<32} {:<10} {}\n",
            "SOURCE", "TARGET", "READS", "MIRROR"
        ));
        for t in &s.tables {
            out.push_str(&format!(
                "{:<32} {:<32} {:<10} {}\n",
                t.source, t.target, t.reads, t.mirror
            ));
        }
    }
    out
}

fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One request; the body of a 2xx answer, else the error the API gave.
fn call(
    admin: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<String, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::unreachable)?;
    let url = format!("{}{path}", admin.trim_end_matches('/'));
    runtime.block_on(async {
        let client = Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(CliError::unreachable)?;
        let mut request = client.request(method, &url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            CliError::unreachable(format!("cannot reach the admin API at {admin}: {e}"))
        })?;
        let code = response.status();
        let text = response.text().await.map_err(CliError::unreachable)?;
        if code.is_success() {
            return Ok(text);
        }
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        let message = format!("{} ({})", message, code.as_u16());
        if code.is_server_error() || code == StatusCode::BAD_GATEWAY {
            Err(CliError::unreachable(message))
        } else {
            Err(CliError::user(message))
        }
    })
}
