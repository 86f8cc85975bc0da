//! `pgbridge ctl backfill TABLE` starts a backfill and waits for it with a progress bar (plain
//! progress lines when stderr is not a terminal) unless `--detach`; `pgbridge ctl jobs [ID]`
//! lists the jobs or shows one.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;

use super::{encode_segment, Ctl};
use crate::migrate::JobView;
use crate::CliError;

/// How often a waiting `ctl backfill` asks for the job.
const POLL: Duration = Duration::from_millis(500);

impl Ctl {
    /// Starts a backfill of `table`; waits for it unless `detach`.
    pub fn backfill(
        &self,
        table: &str,
        chunk_rows: Option<i64>,
        max_rows_per_sec: Option<i64>,
        detach: bool,
    ) -> Result<(), CliError> {
        let path = format!("/api/tables/{}/backfill", encode_segment(table));
        let body =
            serde_json::json!({ "chunk_rows": chunk_rows, "max_rows_per_sec": max_rows_per_sec });
        let Some(job) = self.start_job("backfill", &path, body, detach)? else {
            return Ok(());
        };
        self.show(&job, render_one)?;
        ended_done(&job)
    }

    /// Starts a job with `POST path`; unless `detach`, waits for it and returns it as it ended.
    pub(super) fn start_job(
        &self,
        kind: &str,
        path: &str,
        body: serde_json::Value,
        detach: bool,
    ) -> Result<Option<JobView>, CliError> {
        let mut body = body;
        body["who"] = serde_json::Value::String(super::who());
        if self.dry_run {
            return self.dry_run(Method::POST, path, body).map(|()| None);
        }
        let answer = self.call(Method::POST, path, Some(body))?;
        let started: serde_json::Value =
            serde_json::from_str(&answer).map_err(CliError::unreachable)?;
        let id = started["job"]
            .as_i64()
            .ok_or_else(|| CliError::unreachable(&answer))?;
        if detach {
            self.print(&answer, |_: &serde_json::Value| {
                format!("{kind} job {id} started\n")
            })?;
            return Ok(None);
        }
        self.wait(id).map(Some)
    }

    /// A job as it ended: JSON, or rendered.
    pub(super) fn show(
        &self,
        job: &JobView,
        render: impl FnOnce(&JobView) -> String,
    ) -> Result<(), CliError> {
        if self.json {
            println!(
                "{}",
                serde_json::to_string(job).map_err(CliError::unreachable)?
            );
        } else {
            print!("{}", render(job));
        }
        Ok(())
    }

    /// Follows a job until it ends, with a bar on a terminal, else a line every few seconds.
    fn wait(&self, id: i64) -> Result<JobView, CliError> {
        let bar = (!self.json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template("{bar:40} {pos}/{len} rows {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        let mut lines = 0u32;
        loop {
            let answer = self.call(Method::GET, &format!("/api/jobs/{id}"), None)?;
            let job: JobView = serde_json::from_str(&answer).map_err(CliError::unreachable)?;
            match &bar {
                Some(bar) => {
                    bar.set_length(job.progress.total.unwrap_or(0).max(0) as u64);
                    bar.set_position(job.progress.done.max(0) as u64);
                    bar.set_message(rate(&job));
                }
                None if !self.json && lines % 10 == 0 => eprintln!("{}", progress_line(&job)),
                None => {}
            }
            lines += 1;
            if job.row.state != "running" {
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                return Ok(job);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Lists the jobs, or shows job `id`.
    pub fn jobs(&self, id: Option<i64>) -> Result<(), CliError> {
        match id {
            Some(id) => {
                let answer = self.call(Method::GET, &format!("/api/jobs/{id}"), None)?;
                self.print(&answer, super::verify::render_job)
            }
            None => {
                let answer = self.call(Method::GET, "/api/jobs", None)?;
                self.print(&answer, |jobs: &Vec<JobView>| render_list(jobs))
            }
        }
    }
}

/// A job that ended otherwise than done is an error, with its own.
pub(super) fn ended_done(job: &JobView) -> Result<(), CliError> {
    match job.row.state.as_str() {
        "done" => Ok(()),
        state => Err(CliError::user(format!(
            "{} job {} ended {state}{}",
            job.row.kind,
            job.row.id,
            job.row
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ))),
    }
}

fn rate(job: &JobView) -> String {
    let eta = job
        .progress
        .eta_seconds
        .map(|s| format!(", ETA {s:.0}s"))
        .unwrap_or_default();
    format!("{:.0} rows/s{eta}", job.progress.rows_per_sec)
}

/// `backfill derived_data_bars: 5000/20000 rows, 2500 rows/s, ETA 6s`.
fn progress_line(job: &JobView) -> String {
    let total = job
        .progress
        .total
        .map_or("?".to_string(), |t| t.to_string());
    format!(
        "{} {}: {}/{total} rows, {}",
        job.row.kind,
        job.row.table,
        job.progress.done,
        rate(job)
    )
}

pub(super) fn render_one(job: &JobView) -> String {
    // The rate is the running job's; an ended one is told by its rows.
    let progress = match job.row.state.as_str() {
        "running" => progress_line(job),
        _ => format!(
            "{} {}: {} rows",
            job.row.kind, job.row.table, job.progress.done
        ),
    };
    let mut out = format!("job {} {}\n{progress}\n", job.row.id, job.row.state);
    if let Some(e) = &job.row.error {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}

fn render_list(jobs: &[JobView]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".to_string();
    }
    let mut out = format!(
        "{:<6} {:<10} {:<32} {:<10} {}\n",
        "ID", "KIND", "TABLE", "STATE", "PROGRESS"
    );
    for j in jobs {
        let total = j.progress.total.map_or("?".to_string(), |t| t.to_string());
        out.push_str(&format!(
            "{:<6} {:<10} {:<32} {:<10} {}/{total}\n",
            j.row.id, j.row.kind, j.row.table, j.row.state, j.progress.done
        ));
    }
    out
}
