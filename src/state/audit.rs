//! The audit trail in the shared state: every line an instance appends to its audit log
//! (src/reads/flags/audit.rs) is also queued there and written to `pgbridge.audit` of the state
//! database, with the instance's name, by the instance's state task; `GET /api/audit` of any
//! instance can then show every instance's lines. Lines queued while the state database is
//! unreachable are written once it is back (at most 10,000 kept; the file keeps them all).

use tokio_postgres::Client;

use crate::reads::flags::audit::{queued_front, written_front};

pub(super) const SCHEMA_SQL: &str = "CREATE TABLE IF NOT EXISTS pgbridge.audit (\
    id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), instance text NOT NULL, \
    line jsonb NOT NULL)";

/// Writes the queued lines as `instance`'s; a line is dropped from the queue once written.
pub(super) async fn flush(client: &Client, instance: &str) -> Result<(), tokio_postgres::Error> {
    loop {
        let Some(line) = queued_front() else {
            return Ok(());
        };
        client
            .execute(
                "INSERT INTO pgbridge.audit (instance, line) VALUES ($1, $2::text::jsonb)",
                &[&instance, &line],
            )
            .await?;
        written_front();
    }
}
