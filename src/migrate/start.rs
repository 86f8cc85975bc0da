//! Starting a job: the checks that refuse it (an unknown table, a rule without a key, a job
//! already on the table), its row in `pgbridge.jobs`, and its total; then it runs in a task of
//! its own (src/migrate/mod.rs).

use std::sync::Arc;

use tracing::info;

use super::{backfill, chunk_size, lock, repair, store, verifiable, JobError, JobRow, Jobs};
use super::{DEFAULT_CHUNK_ROWS, DEFAULT_MAX_ROWS_PER_SEC};
use crate::rules::Rule;

impl Jobs {
    /// Starts a backfill of `table` (resuming its last cancelled or failed one); its job id.
    pub async fn start_backfill(
        self: &Arc<Self>,
        table: &str,
        chunk_rows: Option<i64>,
        max_rows_per_sec: Option<i64>,
    ) -> Result<i64, JobError> {
        let rule = self.backfillable(table)?;
        let table = rule.source.to_string();
        let chunk_rows = chunk_size(chunk_rows)?;
        self.refuse_authority(&table)?;
        self.refuse_busy(std::slice::from_ref(&table))?;
        let client = store::connect(&self.secondary).await?;
        self.refuse_busy_elsewhere(&client, std::slice::from_ref(&table))
            .await?;
        let earlier = store::list(&client, None).await?.into_iter().find(|j| {
            j.kind == "backfill" && j.table == table && j.state != "done" && j.state != "running"
        });
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

    /// Starts a verify of `tables` (every verifiable rule's when empty); its job id.
    pub async fn start_verify(
        self: &Arc<Self>,
        tables: &[String],
        chunk_rows: Option<i64>,
        max_rows_per_sec: Option<i64>,
    ) -> Result<i64, JobError> {
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
        let shared = store::connect(&self.secondary).await?;
        self.refuse_busy_elsewhere(&shared, &names).await?;
        let mut total = 0;
        for rule in &chosen {
            total += backfill::count(self, rule).await?;
        }
        let client = store::connect(&self.secondary).await?;
        let job = store::NewJob {
            kind: "verify",
            table: &names.join(","),
            chunk_rows: chunk_size(chunk_rows)?,
            max_rows_per_sec: max_rows_per_sec.unwrap_or(0),
            params: Some(serde_json::json!({ "tables": names })),
        };
        let mut row = self.create(&client, &job).await?;
        store::set_total(&client, row.id, total).await?;
        row.rows_total = Some(total);
        info!(job = row.id, tables = %row.table, "verify started");
        let id = row.id;
        self.spawn(row);
        Ok(id)
    }

    /// Starts a repair of `table` from verify job `verify` (its last verify when `None`).
    pub async fn start_repair(
        self: &Arc<Self>,
        table: &str,
        verify: Option<i64>,
    ) -> Result<i64, JobError> {
        let rule = verifiable(&self.rules.load(), table)?;
        let table = rule.source.to_string();
        self.refuse_authority(&table)?;
        self.refuse_busy(std::slice::from_ref(&table))?;
        let client = store::connect(&self.secondary).await?;
        self.refuse_busy_elsewhere(&client, std::slice::from_ref(&table))
            .await?;
        let verify = repair::find_verify(&client, &table, verify).await?;
        let keys = store::keys(&client, verify, &table).await?.len() as i64;
        let job = store::NewJob {
            kind: "repair",
            table: &table,
            chunk_rows: DEFAULT_CHUNK_ROWS.min(1000),
            max_rows_per_sec: 0,
            params: Some(serde_json::json!({ "verify": verify })),
        };
        let mut row = self.create(&client, &job).await?;
        store::set_total(&client, row.id, keys).await?;
        row.rows_total = Some(keys);
        info!(job = row.id, table = %table, verify, keys, "repair started");
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
