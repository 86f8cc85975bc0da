//! Running one admitted shadow read, within `[shadow] timeout_ms` from its start: a turn on
//! one of the `max_concurrency` connections, the mirror caught up with what the primary's
//! answer saw, the read on a pooled connection, the comparison with the table's rule; then the
//! outcome recorded as a divergence when it is one.

use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, Instrument};

use super::conn::Conn;
use super::{Inner, Outcome, ShadowJob};
use crate::divergence::compare::{compare, CompareOptions, ResultSet};
use crate::divergence::{Divergence, Kind};

/// SQLSTATE of a statement cancelled, here by `statement_timeout`.
const QUERY_CANCELED: &str = "57014";

/// Why a read on the secondary failed.
enum RunError {
    Timeout,
    /// The SQLSTATE (or `connection`) and the message.
    Failed(String, String),
}

impl Inner {
    /// The outcome of one job.
    pub(super) async fn run(&self, job: &ShadowJob) -> Outcome {
        let deadline = Instant::now() + self.opts.timeout;
        let _running = match self.wait_turn(job, deadline).await {
            Ok(permit) => permit,
            Err(outcome) => return outcome,
        };
        let secondary = match self.query(job, deadline).await {
            Ok(r) => r,
            Err(RunError::Timeout) => return Outcome::Timeout,
            // The server's statement_timeout can fire before the client-side deadline does.
            Err(RunError::Failed(code, _)) if code == QUERY_CANCELED => return Outcome::Timeout,
            Err(RunError::Failed(code, message)) => {
                debug!(code, message, "shadow read failed on the secondary");
                return Outcome::Error(code);
            }
        };
        match compare(&job.primary, &secondary, &self.compare_options(job)) {
            None => Outcome::Equal,
            Some(d) => Outcome::Mismatch(d),
        }
    }

    /// A place among the reads running on the secondary, once the mirror applied what the
    /// primary's answer saw; `Dropped` or `Lagging` when the deadline comes first.
    async fn wait_turn(
        &self,
        job: &ShadowJob,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, Outcome> {
        let running = self.running.clone().acquire_owned();
        let Ok(Ok(permit)) = tokio::time::timeout_at(deadline.into(), running).await else {
            return Err(Outcome::Dropped);
        };
        if let (Some(after), Some(applied)) = (job.after, &self.applied) {
            let mut applied = applied.clone();
            let caught_up =
                tokio::time::timeout_at(deadline.into(), applied.wait_for(|&id| id >= after)).await;
            if !matches!(caught_up, Ok(Ok(_))) {
                return Err(Outcome::Lagging);
            }
        }
        Ok(permit)
    }

    /// The table's `[table.compare]` over `[shadow]`'s.
    fn compare_options(&self, job: &ShadowJob) -> CompareOptions {
        let rules = self.rules.load();
        let rule = rules.lookup(&job.table);
        let compare_rule = rule.map(|r| &r.compare);
        CompareOptions {
            ordered: job.ordered,
            key: rule.map(|r| r.key.clone()).unwrap_or_default(),
            float_abs: compare_rule
                .and_then(|c| c.float_tolerance_abs)
                .unwrap_or(self.opts.float_abs),
            float_rel: compare_rule
                .and_then(|c| c.float_tolerance_rel)
                .unwrap_or(self.opts.float_rel),
            ignore: compare_rule
                .map(|c| c.ignore_columns.clone())
                .unwrap_or_default(),
            redact: self.recorder.redact(),
            ..CompareOptions::default()
        }
    }

    /// Runs the job's read on a pooled connection; a connection that timed out or failed is
    /// not returned to the pool.
    async fn query(&self, job: &ShadowJob, deadline: Instant) -> Result<ResultSet, RunError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) if !c.client.is_closed() => c,
            _ => {
                let open = Conn::open(&self.opts.secondary, self.opts.timeout);
                match tokio::time::timeout_at(deadline.into(), open).await {
                    Err(_) => return Err(RunError::Timeout),
                    Ok(Err(e)) => return Err(failed(&e)),
                    Ok(Ok(c)) => c,
                }
            }
        };
        let cancel = conn.client.cancel_token();
        match tokio::time::timeout_at(deadline.into(), conn.run(job)).await {
            Ok(Ok(rs)) => {
                self.give_back(conn);
                Ok(rs)
            }
            Ok(Err(e)) => {
                // A statement error leaves the connection usable; anything else does not.
                if e.as_db_error().is_some() && !conn.client.is_closed() {
                    self.give_back(conn);
                }
                Err(failed(&e))
            }
            Err(_) => {
                let tls = self.opts.secondary.make_tls();
                let cancelling = async move {
                    let _ = cancel.cancel_query(tls).await;
                };
                tokio::spawn(cancelling.in_current_span());
                Err(RunError::Timeout)
            }
        }
    }

    fn give_back(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }

    /// Records a mismatch or a failure on the secondary as a divergence.
    pub(super) fn record(&self, job: &ShadowJob, outcome: &Outcome) {
        let mut d = match outcome {
            Outcome::Mismatch(diff) => {
                let mut d = Divergence::new(Kind::ReadMismatch, job.table.clone());
                d.secondary = format!("{} rows", diff.secondary_rows);
                d.detail = diff.detail.clone();
                d
            }
            Outcome::Error(code) => {
                let mut d = Divergence::new(Kind::SecondaryError, job.table.clone());
                d.secondary = code.clone();
                d.detail = serde_json::json!({"shadow_read": true});
                d
            }
            Outcome::Timeout => {
                let mut d = Divergence::new(Kind::SecondaryError, job.table.clone());
                d.secondary = "timeout".into();
                d.detail = serde_json::json!({
                    "shadow_read": true,
                    "timeout_ms": self.opts.timeout.as_millis() as u64,
                });
                d
            }
            Outcome::Equal | Outcome::Lagging | Outcome::Dropped => return,
        };
        d.primary = format!("{} rows", job.primary.rows.len());
        d.query = job.query.clone();
        d.session = job.session;
        self.recorder.record(d);
    }
}

fn failed(e: &tokio_postgres::Error) -> RunError {
    match e.as_db_error() {
        Some(db) => RunError::Failed(db.code().code().to_string(), db.message().to_string()),
        None => RunError::Failed("connection".into(), crate::net::error_text(e)),
    }
}
