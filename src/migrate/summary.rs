//! What status shows of each table's jobs, kept from `pgbridge.jobs` (so that it survives a
//! restart): its last backfill, and its last verify with how many verifies in a row found it
//! clean (the seeds' "all reconciliation checks pass for 5 consecutive days").

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::reconcile::StatusCounts;
use super::{JobError, Progress};

/// A table's last finished verify.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifySummary {
    pub job: i64,
    /// When it finished (RFC 3339).
    pub finished_at: String,
    /// Seconds since then.
    pub age_seconds: f64,
    pub clean: bool,
    pub matched: u64,
    pub missing: u64,
    pub extra: u64,
    pub differing: u64,
    /// Verifies of the table in a row, newest first, that found it clean.
    pub consecutive_clean: u64,
    /// Clean and no older than `[admin] gate_max_verify_age_secs` (set by status).
    #[serde(default)]
    pub current: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<StatusCounts>,
}

/// A table's last backfill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackfillSummary {
    pub job: i64,
    pub state: String,
    pub progress: Progress,
}

/// One table's jobs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableSummary {
    pub backfill: Option<BackfillSummary>,
    pub verify: Option<VerifySummary>,
    /// When the last verify finished, in seconds since the epoch (its age is computed when
    /// asked).
    pub(super) verified_at: f64,
}

const SQL: &str = "SELECT id, kind, \"table\", state, result::text, rows_done, rows_total, \
    coalesce(extract(epoch FROM finished_at)::float8, 0), coalesce(finished_at::text, '') \
    FROM pgbridge.jobs ORDER BY id DESC LIMIT 10000";

/// Every table's jobs, from the jobs table.
pub(super) async fn load(client: &Client) -> Result<HashMap<String, TableSummary>, JobError> {
    let rows = client.query(SQL, &[]).await.map_err(JobError::Secondary)?;
    let mut out: HashMap<String, TableSummary> = HashMap::new();
    // Verifies whose run of clean ones ended (an unclean one was seen, newer first).
    let mut broken: std::collections::HashSet<String> = Default::default();
    for r in &rows {
        let (id, kind, tables, state): (i64, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let result: Option<serde_json::Value> = r
            .get::<_, Option<String>>(4)
            .and_then(|t| serde_json::from_str(&t).ok());
        match kind.as_str() {
            "backfill" => {
                let entry = out.entry(tables).or_default();
                if entry.backfill.is_none() {
                    let (done, total): (i64, Option<i64>) = (r.get(5), r.get(6));
                    entry.backfill = Some(BackfillSummary {
                        job: id,
                        state,
                        progress: Progress {
                            done,
                            total,
                            ..Progress::default()
                        },
                    });
                }
            }
            "verify" if state == "done" => {
                let Some(result) = result else { continue };
                let at: (f64, String) = (r.get(7), r.get(8));
                for t in result["tables"].as_array().into_iter().flatten() {
                    note_verify(&mut out, &mut broken, id, t, &at);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// One table's result of a verify, older than every one noted before.
fn note_verify(
    out: &mut HashMap<String, TableSummary>,
    broken: &mut std::collections::HashSet<String>,
    job: i64,
    t: &serde_json::Value,
    (epoch, finished): &(f64, String),
) {
    let Ok(v) = serde_json::from_value::<super::verify::TableResult>(t.clone()) else {
        return;
    };
    let clean = v.differences() == 0;
    let entry = out.entry(v.table.clone()).or_default();
    if entry.verify.is_none() {
        entry.verified_at = *epoch;
        entry.verify = Some(VerifySummary {
            job,
            finished_at: finished.clone(),
            clean,
            matched: v.matched,
            missing: v.missing,
            extra: v.extra,
            differing: v.differing,
            reconcile: v.reconcile,
            ..VerifySummary::default()
        });
    }
    if !clean {
        broken.insert(v.table.clone());
    } else if !broken.contains(&v.table) {
        if let Some(s) = &mut entry.verify {
            s.consecutive_clean += 1;
        }
    }
}

impl TableSummary {
    /// The summary with the verify's age as of now.
    pub fn now(&self) -> TableSummary {
        let mut s = self.clone();
        if let Some(v) = &mut s.verify {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            v.age_seconds = (now - self.verified_at).max(0.0);
        }
        s
    }
}
