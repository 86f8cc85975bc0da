//! The audit trail in the shared state: every line an instance appends to its audit log
//! (src/reads/flags/audit.rs) is also queued here and written to `pgbridge.audit` of the state
//! database, with the instance's name, by the instance's state task; `GET /api/audit` of any
//! instance can then show every instance's lines. Lines queued while the state database is
//! unreachable are written once it is back (at most [`QUEUED_AT_MOST`] kept; the file keeps
//! them all).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio_postgres::Client;

/// How many lines wait for the state database at most.
const QUEUED_AT_MOST: usize = 10_000;

pub(super) const SCHEMA_SQL: &str = "CREATE TABLE IF NOT EXISTS pgbridge.audit (\
    id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), instance text NOT NULL, \
    line jsonb NOT NULL)";

static QUEUE: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// Queues an audit line (JSON text) for the shared state.
pub fn queue(line: &str) {
    let mut q = QUEUE.lock().unwrap_or_else(|e| e.into_inner());
    if q.len() == QUEUED_AT_MOST {
        q.pop_front();
    }
    q.push_back(line.to_string());
}

/// Writes the queued lines as `instance`'s; a line is dropped from the queue once written.
pub(super) async fn flush(client: &Client, instance: &str) -> Result<(), tokio_postgres::Error> {
    loop {
        let next = QUEUE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .cloned();
        let Some(line) = next else { return Ok(()) };
        client
            .execute(
                "INSERT INTO pgbridge.audit (instance, line) VALUES ($1, $2::text::jsonb)",
                &[&instance, &line],
            )
            .await?;
        QUEUE.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
    }
}
