//! Starting a job: the checks that refuse it (an unknown table, a rule without a key, a job
//! already on the table), its row in `pgbridge.jobs`, and its total; then it runs in a task of
//! its own (src/migrate/mod.rs).

use std::sync::Arc;

use tracing::info;

use super::{backfill, chunk_size, lock, repair, store, verifiable, JobError, JobRow, Jobs};
use super::{DEFAULT_CHUNK_ROWS, DEFAULT_MAX_ROWS_PER_SEC};
use crate::rules::Rule;

/// What a job would do, for `--dry-run`: nothing is written, no job is made.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct JobPlan {
    pub dry_run: bool,
    /// backfill, verify or repair.
    pub kind: &'static str,
    pub tables: Vec<String>,
    /// The rows it would copy or compare (the source's rows in the rule's `where`), or the
    /// keys a repair would make equal.
    pub rows: i64,
    /// The cancelled or failed backfill it would resume, after its last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumes: Option<i64>,
    /// The rows that backfill has copied already.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_done: Option<i64>,
    /// The verify a repair works from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<i64>,
}

/// A backfill that passed its checks: its rule, the jobs' database, the job it resumes.
struct Backfill {
    rule: Arc<Rule>,
    table: String,
    chunk_rows: i64,
    client: tokio_postgres::Client,
    earlier: Option<JobRow>,
}

impl JobPlan {
    fn new(kind: &'static str, tables: Vec<String>, rows: i64) -> JobPlan {
        JobPlan {
            dry_run: true,
            kind,
            tables,
            rows,
            resumes: None,
            rows_done: None,
            verify: None,
        }
    }
}

impl Jobs {
    /// The checks of a backfill of `table`, and the cancelled or failed one it would resume.
    async fn prepare_backfill(
        &self,
        table: &str,
        chunk_rows: Option<i64>,
    ) -> Result<Backfill, JobError> {
        let rule = self.backfillable(table)?;
        let table = rule.source.to_string();
        let chunk_rows = chunk_size(chunk_rows)?;
        let client = self.refuse_taken(&table).await?;
        let earlier = store::list(&client, None).await?.into_iter().find(|j| {
            j.kind == "backfill" && j.table == table && j.state != "done" && j.state != "running"
        });
        Ok(Backfill {
            rule,
            table,
            chunk_rows,
            client,
            earlier,
        })
    }

    /// What a backfill of `table` would do, or why it would be refused.
    pub async fn plan_backfill(
        self: &Arc<Self>,
        table: &str,
        chunk_rows: Option<i64>,
    ) -> Result<JobPlan, JobError> {
        let b = self.prepare_backfill(table, chunk_rows).await?;
        let rows = backfill::count(self, &b.rule).await?;
        let mut plan = JobPlan::new("backfill", vec![b.table], rows);
        plan.resumes = b.earlier.as_ref().map(|j| j.id);
        plan.rows_done = b.earlier.map(|j| j.rows_done);
        Ok(plan)
    }

    /// Starts a backfill of `table` (resuming its last cancelled or failed one); its job id.
    pub async fn start_backfill(
        self: &Arc<Self>,
        table: &str,
        chunk_rows: Option<i64>,
        max_rows_per_sec: Option<i64>,
    ) -> Result<i64, JobError> {
        let Backfill {
            rule,
            table,
            chunk_rows,
            client,
            earlier,
        } = self.prepare_backfill(table, chunk_rows).await?;
        let (mut row, resumed) = match earlier {
            Some(j) => {
                store::reopen(&client, j.id).await?;
                (j, true)
            }
            None => {
                let job = store::NewJob {
                    kind: "backfill",
                    table: &table,
                    chunk_rows,
                    max_rows_per_sec: max_rows_per_sec.unwrap_or(DEFAULT_MAX_ROWS_PER_SEC),
                    params: None,
                };
                (self.create(&client, &job).await?, false)
            }
        };
        row.chunk_rows = chunk_rows;
        row.max_rows_per_sec = max_rows_per_sec.unwrap_or(row.max_rows_per_sec);
        if row.rows_total.is_none() {
            let total = backfill::count(self, &rule).await?;
            store::set_total(&client, row.id, total).await?;
            row.rows_total = Some(total);
        }
        info!(job = row.id, table = %table, resumed, "backfill started");
        let id = row.id;
        self.spawn(row);
        Ok(id)
    }

    /// What a verify of `tables` (empty: every table that can be verified) would compare, or
    /// why it would be refused.
    pub async fn plan_verify(self: &Arc<Self>, tables: &[String]) -> Result<JobPlan, JobError> {
        Ok(self.verify_plan(tables).await?.0)
    }

    /// [`Jobs::plan_verify`], and the jobs' database it asked.
    async fn verify_plan(
        self: &Arc<Self>,
        tables: &[String],
    ) -> Result<(JobPlan, tokio_postgres::Client), JobError> {
        let rules = self.rules.load();
        let chosen: Vec<Arc<Rule>> = match tables.is_empty() {
            true => rules
                .rules()
                .iter()
                .filter(|r| verifiable(&rules, &r.source.to_string()).is_ok())
                .cloned()
                .collect(),
            false => tables
                .iter()
                .map(|t| verifiable(&rules, t))
                .collect::<Result<_, _>>()?,
        };
        if chosen.is_empty() {
            return Err(JobError::UnknownTable(
                "(any: no rule can be verified)".into(),
            ));
        }
        let names: Vec<String> = chosen.iter().map(|r| r.source.to_string()).collect();
        self.refuse_busy(&names)?;
        let client = store::connect(&self.secondary).await?;
        self.refuse_busy_elsewhere(&client, &names).await?;
        let mut total = 0;
        for rule in &chosen {
            total += backfill::count(self, rule).await?;
        }
        Ok((JobPlan::new("verify", names, total), client))
    }

    /// Starts a verify of `tables` (empty: every table that can be verified); its job id.
    pub async fn start_verify(
        self: &Arc<Self>,
        tables: &[String],
        chunk_rows: Option<i64>,
        max_rows_per_sec: Option<i64>,
    ) -> Result<i64, JobError> {
        let (plan, client) = self.verify_plan(tables).await?;
        let job = store::NewJob {
            kind: "verify",
            table: &plan.tables.join(","),
            chunk_rows: chunk_size(chunk_rows)?,
            max_rows_per_sec: max_rows_per_sec.unwrap_or(0),
            params: Some(serde_json::json!({ "tables": plan.tables })),
        };
        self.launch(&client, &job, plan.rows).await
    }

    /// What a repair of `table` from verify `verify` (default: its last) would make equal, or
    /// why it would be refused.
    pub async fn plan_repair(
        self: &Arc<Self>,
        table: &str,
        verify: Option<i64>,
    ) -> Result<JobPlan, JobError> {
        Ok(self.repair_plan(table, verify).await?.0)
    }

    /// [`Jobs::plan_repair`], and the jobs' database it asked.
    async fn repair_plan(
        self: &Arc<Self>,
        table: &str,
        verify: Option<i64>,
    ) -> Result<(JobPlan, tokio_postgres::Client), JobError> {
        let rule = verifiable(&self.rules.load(), table)?;
        let table = rule.source.to_string();
        let client = self.refuse_taken(&table).await?;
        let verify = repair::find_verify(&client, &table, verify).await?;
        let keys = store::keys(&client, verify, &table).await?.len() as i64;
        let mut plan = JobPlan::new("repair", vec![table], keys);
        plan.verify = Some(verify);
        Ok((plan, client))
    }

    /// Starts a repair of `table` from verify `verify` (default: its last); its job id.
    pub async fn start_repair(
        self: &Arc<Self>,
        table: &str,
        verify: Option<i64>,
    ) -> Result<i64, JobError> {
        let (plan, client) = self.repair_plan(table, verify).await?;
        let job = store::NewJob {
            kind: "repair",
            table: &plan.tables[0],
            chunk_rows: DEFAULT_CHUNK_ROWS.min(1000),
            max_rows_per_sec: 0,
            params: Some(serde_json::json!({ "verify": plan.verify })),
        };
        self.launch(&client, &job, plan.rows).await
    }

    /// Makes `job`'s row with its total in the jobs' database and runs it; its id.
    async fn launch(
        self: &Arc<Self>,
        client: &tokio_postgres::Client,
        job: &store::NewJob<'_>,
        total: i64,
    ) -> Result<i64, JobError> {
        let mut row = self.create(client, job).await?;
        store::set_total(client, row.id, total).await?;
        row.rows_total = Some(total);
        info!(job = row.id, kind = job.kind, table = %row.table, rows = total, "job started");
        let id = row.id;
        self.spawn(row);
        Ok(id)
    }

    async fn create(
        &self,
        client: &tokio_postgres::Client,
        job: &store::NewJob<'_>,
    ) -> Result<JobRow, JobError> {
        let id = store::create(client, job).await?;
        store::get(client, id).await?.ok_or(JobError::NoJob(id))
    }

    /// Refuses a job that writes `table` (a backfill or repair) while its writes are on the
    /// secondary or a job of any instance works on it; the jobs' database.
    async fn refuse_taken(&self, table: &str) -> Result<tokio_postgres::Client, JobError> {
        let tables = [table.to_string()];
        self.refuse_authority(table)?;
        self.refuse_busy(&tables)?;
        let client = store::connect(&self.secondary).await?;
        self.refuse_busy_elsewhere(&client, &tables).await?;
        Ok(client)
    }

    /// Refuses a backfill or repair of a table whose writes are on the secondary.
    fn refuse_authority(&self, table: &str) -> Result<(), JobError> {
        let switched = crate::rules::TableName::parse(table)
            .is_some_and(|t| self.writes.load().get(&t).on_secondary());
        match switched {
            true => Err(JobError::Authority(table.to_string())),
            false => Ok(()),
        }
    }

    /// Refuses a job on a table another job of this process works on.
    /// A job another live instance runs on one of `tables` (its lease renewed) refuses it
    /// too.
    async fn refuse_busy_elsewhere(
        &self,
        client: &tokio_postgres::Client,
        tables: &[String],
    ) -> Result<(), JobError> {
        for row in store::list(client, Some("running")).await? {
            if row.lease_lapsed || row.owner.as_deref() == Some(self.instance.as_str()) {
                continue;
            }
            let busy: Vec<&str> = row.table.split(',').collect();
            if let Some(t) = tables.iter().find(|t| busy.contains(&t.as_str())) {
                return Err(JobError::Running(t.clone(), row.id));
            }
        }
        Ok(())
    }

    fn refuse_busy(&self, tables: &[String]) -> Result<(), JobError> {
        let running = lock(&self.running);
        for t in tables {
            if let Some(r) = running.values().find(|r| r.tables.contains(t)) {
                return Err(JobError::Running(t.clone(), r.id));
            }
        }
        Ok(())
    }
}
