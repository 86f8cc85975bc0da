//! `pgbridge ctl status`: the state of a running proxy.

use reqwest::Method;

use super::Ctl;
use crate::admin::Status;
use crate::CliError;

impl Ctl {
    /// Prints the proxy's tables, mirror, divergences and sessions.
    pub fn status(&self) -> Result<(), CliError> {
        let body = self.call(Method::GET, "/api/status", None)?;
        self.print(&body, render)
    }
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
