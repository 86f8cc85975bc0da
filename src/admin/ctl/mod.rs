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
    /// Ask the mutating command what it would do, and change nothing.
    pub dry_run: bool,
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

impl Ctl {
    /// Asks for a dry run of the change `body` describes (`PUT` or `POST path`), prints what
    /// it would do, and fails (exit 1) when it would be refused.
    fn dry_run(
        &self,
        method: Method,
        path: &str,
        mut body: serde_json::Value,
    ) -> Result<(), CliError> {
        body["dry_run"] = serde_json::Value::Bool(true);
        let answer = self.call(method, path, Some(body))?;
        let plan: serde_json::Value =
            serde_json::from_str(&answer).map_err(CliError::unreachable)?;
        self.print(&answer, render_dry_run)?;
        match plan["refused"].as_array().filter(|r| !r.is_empty()) {
            Some(_) => Err(CliError::user("dry run: it would be refused")),
            None => Ok(()),
        }
    }
}

/// A dry run's answer for people: a switch's verdict, or a job's plan.
fn render_dry_run(p: &serde_json::Value) -> String {
    let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
    let list = |k: &str| -> Vec<String> {
        p[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let mut out = String::from("dry run, nothing changed: ");
    if let Some(kind) = p["kind"].as_str() {
        let (tables, rows) = (list("tables").join(", "), &p["rows"]);
        out.push_str(&match kind {
            "repair" => format!(
                "a repair of {tables} would make {rows} keys equal again, from verify {}",
                p["verify"]
            ),
            "verify" => format!("a verify of {tables} would compare {rows} rows"),
            _ => format!("a {kind} of {tables} would copy {rows} rows"),
        });
        if let Some(id) = p["resumes"].as_i64() {
            out.push_str(&format!(
                ", resuming job {id} after its {} rows done",
                p["rows_done"]
            ));
        }
        out.push('\n');
        return out;
    }
    let (what, now, before) = match p.get("writes") {
        Some(_) => ("writes", text("writes"), text("previous")),
        None => ("reads", text("reads"), text("previous")),
    };
    let share = |source: String, k: &str| match p[k].as_u64() {
        Some(n) if n != 100 => format!("{source} for {n}% of the sessions"),
        _ => source,
    };
    let (now, before) = (share(now, "percent"), share(before, "previous_percent"));
    if p["would_change"] != true {
        out.push_str(&format!("{}: {what} already on {now}\n", text("source")));
        return out;
    }
    out.push_str(&format!(
        "{}: {what} would move from {before} to {now}\n",
        text("source")
    ));
    let refused = list("refused");
    match refused.is_empty() {
        true => out.push_str("the gate would let it through\n"),
        false => out.push_str(&format!("the gate would refuse: {}\n", refused.join("; "))),
    }
    let overridden = list("overridden");
    if !overridden.is_empty() {
        out.push_str(&format!(
            "--force would override: {}\n",
            overridden.join("; ")
        ));
    }
    out
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
