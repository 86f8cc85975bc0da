//! `pgbridge ctl writes TABLE primary|secondary|complete`: where a table's writes are executed.

use reqwest::Method;

use super::{encode_segment, who, Ctl};
use crate::CliError;

impl Ctl {
    /// Switches the writes of `table` to `target`; prints the switch made (or why not).
    pub fn set_writes(
        &self,
        table: &str,
        target: &str,
        reason: Option<&str>,
        force: bool,
        timeout_ms: Option<u64>,
    ) -> Result<(), CliError> {
        let path = format!("/api/tables/{}/writes", encode_segment(table));
        let body = serde_json::json!({
            "target": target, "reason": reason, "force": force, "who": who(),
            "timeout_ms": timeout_ms,
        });
        if self.dry_run {
            return self.dry_run(Method::PUT, &path, body);
        }
        let answer = self.call(Method::PUT, &path, Some(body))?;
        self.print(&answer, render)
    }
}

fn render(s: &serde_json::Value) -> String {
    let word = |k: &str| s[k].as_str().unwrap_or_default().to_string();
    let mut out = match s["changed"].as_bool() {
        Some(true) if word("writes") == "complete" => format!(
            "{}: migration complete: writes stay on the secondary, the reverse mirror stopped\n",
            word("source")
        ),
        Some(true) => format!(
            "{}: writes now on the {} (was {}; writes held {} ms)\n",
            word("source"),
            word("writes"),
            word("previous"),
            s["paused_ms"]
        ),
        _ => format!(
            "{}: writes already on the {}\n",
            word("source"),
            word("writes")
        ),
    };
    if let Some(over) = s["overridden"].as_array().filter(|o| !o.is_empty()) {
        let list: Vec<&str> = over.iter().filter_map(|v| v.as_str()).collect();
        out.push_str(&format!("forced past: {}\n", list.join("; ")));
    }
    out
}
