//! `pgbridge ctl status`: the state of a running proxy.

use reqwest::Method;

use super::Ctl;
use crate::admin::status::TableStatus;
use crate::admin::Status;
use crate::CliError;

impl Ctl {
    /// Prints the proxy's tables, mirror, divergences and sessions.
    pub fn status(&self) -> Result<(), CliError> {
        let body = self.call(Method::GET, "/api/status", None)?;
        self.print(&body, render)
    }

    /// Prints one table's phase, flags, jobs and the next step's command.
    pub fn table_status(&self, table: &str) -> Result<(), CliError> {
        let body = self.call(Method::GET, "/api/status", None)?;
        let status: Status = serde_json::from_str(&body).map_err(|e| {
            CliError::unreachable(format!(
                "{} did not answer as pgbridge does: {e}",
                self.admin
            ))
        })?;
        let wanted =
            |t: &&TableStatus| t.source == table || t.source.strip_prefix("public.") == Some(table);
        let Some(t) = status.tables.iter().find(wanted) else {
            return Err(CliError::user(format!(
                "no rule migrates a table named {table:?}"
            )));
        };
        let answer = serde_json::to_string_pretty(t).expect("status serializes");
        self.print(&answer, |t: &TableStatus| render_table(t, &status))
    }

    /// Prints the audit trail, newest first.
    pub fn audit(&self, table: Option<&str>, limit: u32) -> Result<(), CliError> {
        let mut path = format!("/api/audit?limit={limit}");
        if let Some(t) = table {
            path.push_str(&format!("&table={}", super::encode_segment(t)));
        }
        let body = self.call(Method::GET, &path, None)?;
        self.print(&body, render_audit)
    }
}

fn render_table(t: &TableStatus, s: &Status) -> String {
    let mut out = format!(
        "{} -> {}
phase: {}
",
        t.source, t.target, t.phase
    );
    out.push_str(&format!(
        "reads: {} {}%   writes: {}   mirror: {}
",
        t.reads, t.reads_percent, t.writes, t.mirror
    ));
    if let Some(b) = &t.backfill {
        let total = b.progress.total.map_or("?".to_string(), |n| n.to_string());
        out.push_str(&format!(
            "backfill: job {} {} ({} of {total} rows)
",
            b.job, b.state, b.progress.done
        ));
    }
    if let Some(v) = &t.last_verify {
        out.push_str(&format!(
            "last verify: job {} {} ({} matched, {} missing, {} extra, {} differing; {:.0}s ago{})
",
            v.job,
            if v.clean { "clean" } else { "differences" },
            v.matched,
            v.missing,
            v.extra,
            v.differing,
            v.age_seconds,
            if v.current { "" } else { ", not current" }
        ));
    }
    out.push_str(&format!(
        "mirror lag: {:.1}s, parked {}
",
        s.mirror.lag_seconds, s.mirror.parked
    ));
    if t.needs_repair.is_some() {
        out.push_str(
            "needs repair: a write the mirror missed
",
        );
    }
    match &t.next {
        Some(n) => out.push_str(&format!(
            "next: {}
  {}
",
            n.step, n.command
        )),
        None => out.push_str(
            "next: nothing, the migration is complete
",
        ),
    }
    out
}

fn render_audit(a: &serde_json::Value) -> String {
    let mut out = format!(
        "{:<24} {:<16} {:<16} {:<8} {:<24} {:<22} {}\n",
        "WHEN", "INSTANCE", "WHO", "KIND", "TABLE", "WHAT", "REASON"
    );
    for e in a["entries"].as_array().into_iter().flatten() {
        let text = |k: &str| e[k].as_str().unwrap_or("").to_string();
        let mut what = format!("{} -> {}", text("from"), text("to"));
        if e["percent"].as_u64().is_some_and(|p| p < 100) {
            what.push_str(&format!(" {}%", e["percent"]));
        }
        if e["forced"] == true {
            what.push_str(" (forced)");
        }
        out.push_str(&format!(
            "{:<24} {:<16} {:<16} {:<8} {:<24} {:<22} {}\n",
            text("ts"),
            text("instance"),
            text("who"),
            text("kind"),
            text("table"),
            what,
            text("reason")
        ));
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
    if let Some(r) = &s.reverse {
        out.push_str(&format!(
            "reverse mirror: applied {} queued {} lag {:.1}s\n",
            r["applied"],
            r["queued"],
            r["lag_seconds"].as_f64().unwrap_or(0.0)
        ));
    }
    out.push_str(&format!("divergences: {}", s.divergences.total));
    for (kind, n) in &s.divergences.by_kind {
        out.push_str(&format!(" {kind}={n}"));
    }
    out.push('\n');
    if s.tables.is_empty() {
        out.push_str("tables: none migrated\n");
        return out;
    }
    out.push_str(&format!(
        "{:<32} {:<32} {:<16} {:<10} {}\n",
        "SOURCE", "TARGET", "READS", "WRITES", "MIRROR"
    ));
    for t in &s.tables {
        let reads = match t.reads_percent {
            100 => t.reads.clone(),
            p => format!("{} {p}%", t.reads),
        };
        out.push_str(&format!(
            "{:<32} {:<32} {:<16} {:<10} {}\n",
            t.source, t.target, reads, t.writes, t.mirror
        ));
    }
    out
}
