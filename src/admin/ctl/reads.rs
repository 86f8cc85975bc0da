//! `pgbridge ctl reads TABLE primary|shadow|secondary [--percent P]`: where a table's reads
//! are served, for a share of the sessions.

use reqwest::Method;

use super::{encode_segment, who, Ctl};
use crate::reads::TableState;
use crate::CliError;

impl Ctl {
    /// Switches the reads of `table` to `source` for `percent` of the sessions; prints the new
    /// state.
    pub fn set_reads(
        &self,
        table: &str,
        source: &str,
        percent: u8,
        reason: Option<&str>,
        force: bool,
    ) -> Result<(), CliError> {
        let path = format!("/api/tables/{}/reads", encode_segment(table));
        let body = serde_json::json!({
            "source": source, "percent": percent, "reason": reason, "force": force, "who": who(),
        });
        if self.dry_run {
            return self.dry_run(Method::PUT, &path, body);
        }
        let answer = self.call(Method::PUT, &path, Some(body))?;
        self.print(&answer, render)
    }
}

fn render(s: &TableState) -> String {
    let share = |source: &str, p: u8| match p {
        100 => source.to_string(),
        p => format!("{source} for {p}% of the sessions"),
    };
    let now = share(&s.reads, s.percent);
    let mut out = match s.changed {
        true => format!(
            "{}: reads now served by {now} (was {})\n",
            s.source,
            share(&s.previous, s.previous_percent)
        ),
        false => format!("{}: reads already served by {now}\n", s.source),
    };
    if s.forced && !s.overridden.is_empty() {
        out.push_str(&format!("forced past: {}\n", s.overridden.join("; ")));
    }
    out
}
