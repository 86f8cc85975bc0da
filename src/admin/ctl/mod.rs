//! `pgbridge ctl`: the admin API from the command line, one file per command.
//!
//! Every command prints for people, or with `--json` the API's own JSON answer. Exit codes: 0
//! done, 1 refused (bad value, wrong token, unknown table, a safety gate), 2 the admin API could
//! not be reached.

mod jobs;
mod reads;
mod status;
mod verify;
mod writes;

pub use verify::VerifyArgs;

use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::CliError;

/// Where the admin API is, the token for changes, and how to print.
pub struct Ctl {
    pub admin: String,
    pub token: Option<String>,
    /// Print the API's JSON as it is, for scripts.
    pub json: bool,
}

impl Ctl {
    /// One request; the body of a 2xx answer, else the error the API gave.
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<String, CliError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CliError::unreachable)?;
        runtime.block_on(self.request(method, path, body))
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<String, CliError> {
        let url = format!("{}{path}", self.admin.trim_end_matches('/'));
        let client = Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(CliError::unreachable)?;
        let mut request = client.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            CliError::unreachable(format!("cannot reach the admin API at {}: {e}", self.admin))
        })?;
        let code = response.status();
        let text = response.text().await.map_err(CliError::unreachable)?;
        if code.is_success() {
            return Ok(text);
        }
        Err(refusal(code, text))
    }

    /// Prints an answer: as JSON with `--json`, else as `render` puts it for people.
    fn print<T: DeserializeOwned>(
        &self,
        answer: &str,
        render: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        if self.json {
            println!("{}", answer.trim_end());
            return Ok(());
        }
        let value: T = serde_json::from_str(answer).map_err(|e| {
            CliError::unreachable(format!(
                "{} did not answer as pgbridge does: {e}",
                self.admin
            ))
        })?;
        print!("{}", render(&value));
        Ok(())
    }
}

/// The API's error for a failed call: its message and status code, as a user error (exit 1),
/// or as unreachable (exit 2) when the server failed.
fn refusal(code: StatusCode, text: String) -> CliError {
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(text);
    let message = format!("{} ({})", message, code.as_u16());
    if code.is_server_error() || code == StatusCode::BAD_GATEWAY {
        CliError::unreachable(message)
    } else {
        CliError::user(message)
    }
}

/// A path segment, percent-encoded.
pub(super) fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Who asks, for the audit log.
fn who() -> String {
    format!(
        "{}@ctl",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}
