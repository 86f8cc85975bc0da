//! `pgbridge ctl verify [TABLE...]` compares the rules' image of the source with the target and
//! exits 3 when they differ (writing the reconciliation report with `--report FILE.csv`);
//! `pgbridge ctl repair TABLE [--verify JOB]` makes them equal again where a verify found them
//! different.

use reqwest::Method;
use serde_json::Value as Json;

use super::jobs::{ended_done, render_one};
use super::{encode_segment, Ctl};
use crate::migrate::JobView;
use crate::CliError;

/// How a verify is started.
pub struct VerifyArgs<'a> {
    pub tables: &'a [String],
    pub chunk_rows: Option<i64>,
    pub max_rows_per_sec: Option<i64>,
    pub report: Option<&'a std::path::Path>,
    pub detach: bool,
}

impl Ctl {
    /// Starts a verify; unless detached, waits, shows what it found, writes the report, and
    /// exits 3 when a table differs.
    pub fn verify(&self, args: VerifyArgs<'_>) -> Result<(), CliError> {
        let body = serde_json::json!({ "tables": args.tables, "chunk_rows": args.chunk_rows,
                                       "max_rows_per_sec": args.max_rows_per_sec });
        let Some(job) = self.start_job("verify", "/api/verify", body, args.detach)? else {
            return Ok(());
        };
        self.show(&job, render_verify)?;
        ended_done(&job)?;
        if let Some(path) = args.report {
            let csv = self.call(
                Method::GET,
                &format!("/api/jobs/{}/report.csv", job.row.id),
                None,
            )?;
            std::fs::write(path, csv)
                .map_err(|e| CliError::user(format!("cannot write {}: {e}", path.display())))?;
        }
        clean_or_differences(&job, "verify")
    }

    /// Starts a repair of `table`; unless detached, waits and shows what is still different.
    pub fn repair(&self, table: &str, verify: Option<i64>, detach: bool) -> Result<(), CliError> {
        let path = format!("/api/tables/{}/repair", encode_segment(table));
        let body = serde_json::json!({ "verify": verify });
        let Some(job) = self.start_job("repair", &path, body, detach)? else {
            return Ok(());
        };
        self.show(&job, render_repair)?;
        ended_done(&job)?;
        clean_or_differences(&job, "repair")
    }
}

/// Exit 3 unless the job's result says clean.
fn clean_or_differences(job: &JobView, what: &str) -> Result<(), CliError> {
    let result = job.row.result.as_ref();
    match result.and_then(|r| r["clean"].as_bool()) {
        Some(true) => Ok(()),
        _ => Err(CliError::differences(format!(
            "{what} job {}: the target differs from the source",
            job.row.id
        ))),
    }
}

/// `derived_data_bars: 99990 matched, 3 missing, 2 extra, 5 differing` and the sample keys.
fn render_table(t: &Json) -> String {
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let mut out = format!(
        "{}: {} matched, {} missing, {} extra, {} differing",
        t["table"].as_str().unwrap_or("?"),
        n("matched"),
        n("missing"),
        n("extra"),
        n("differing")
    );
    if n("unsettled") > 0 {
        out.push_str(&format!(", {} still changing", n("unsettled")));
    }
    out.push('\n');
    for s in t["samples"].as_array().into_iter().flatten() {
        let key: Vec<String> = s["key"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap_or("NULL").to_string())
            .collect();
        let cols: Vec<&str> = s["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .collect();
        let what = s["what"].as_str().unwrap_or("?");
        out.push_str(&format!("  {what:<9} ({})", key.join(", ")));
        if !cols.is_empty() {
            out.push_str(&format!(" {}", cols.join(", ")));
        }
        out.push('\n');
    }
    out
}

/// A job as `ctl jobs ID` shows it: with what a verify found or a repair left.
pub(super) fn render_job(job: &JobView) -> String {
    match job.row.kind.as_str() {
        "verify" => render_verify(job),
        "repair" => render_repair(job),
        _ => render_one(job),
    }
}

fn render_verify(job: &JobView) -> String {
    let mut out = render_one(job);
    let tables = job.row.result.as_ref().map(|r| &r["tables"]);
    for t in tables.and_then(Json::as_array).into_iter().flatten() {
        out.push_str(&render_table(t));
    }
    out
}

fn render_repair(job: &JobView) -> String {
    let mut out = render_one(job);
    if let Some(r) = &job.row.result {
        out.push_str(&format!(
            "{} keys repaired from verify job {}, {} rows written or deleted\nafter: ",
            r["keys"], r["verify"], r["written"]
        ));
        out.push_str(&render_table(&r["after"]));
    }
    out
}
