//! The state the pgbridge instances of one migration share (`[state]`, src/config/state.rs):
//! the read flags of every table and the instances' heartbeats, in schema `pgbridge` of the
//! state database (the secondary's, by default).
//!
//! - A change of a table's reads through the admin API of any instance is made there first
//!   ([`SharedState::publish_reads`]: the gate and the audit line are that instance's), then
//!   written to `pgbridge.flags` with a `NOTIFY pgbridge_state` in the same statement.
//! - Every instance LISTENs, and on each notification (and every [`REREAD`] as the safety net)
//!   reads the flags and applies those that differ from its own to the next statement of every
//!   session ([`crate::reads::ReadFlags::apply_shared`]). A table with no row yet gets this
//!   instance's flag, so the first instance seeds the shared state from its rules.
//! - Every instance writes its heartbeat (`pgbridge.instances`: when seen, sessions, mirror lag)
//!   every [`REREAD`]; `/api/status` lists them.
//! - The state database unreachable: every instance keeps serving with the flags it knew, a
//!   change is refused with a clear error (nothing switches by accident), and status and
//!   `pgbridge_state_connected` say so; it reconnects by itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::{AsyncMessage, Client};
use tracing::{info, warn};

mod agree_reads;
pub mod audit;
mod epoch;
pub mod writes;

use crate::config::PgUrl;
use crate::reads::ReadFlags;
use crate::rules::{ReadSource, TableName};

/// How often each instance re-reads the flags and writes its heartbeat.
const REREAD: Duration = Duration::from_secs(1);

/// How long a change waits for the state database to be connected before it is refused.
const REACHABLE_WAIT: Duration = Duration::from_secs(2);

/// An instance not seen for this long is not live (it is still listed, with when it was seen).
pub const LIVE_WITHIN: Duration = Duration::from_secs(5);

const CHANNEL: &str = "pgbridge_state";

const SCHEMA_SQL: &str = "CREATE SCHEMA IF NOT EXISTS pgbridge; \
    CREATE TABLE IF NOT EXISTS pgbridge.flags (source text PRIMARY KEY, reads text NOT NULL, \
    percent int NOT NULL, instance text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now()); \
    CREATE TABLE IF NOT EXISTS pgbridge.instances (name text PRIMARY KEY, \
    seen timestamptz NOT NULL DEFAULT now(), started_at timestamptz NOT NULL DEFAULT now(), \
    sessions bigint NOT NULL DEFAULT 0, lag_seconds float8 NOT NULL DEFAULT 0)";

/// A table's flag: `$1` source, `$2` reads, `$3` percent, `$4` instance; notifies the others.
const PUBLISH_SQL: &str =
    "WITH up AS (INSERT INTO pgbridge.flags (source, reads, percent, instance) \
    VALUES ($1, $2, $3::text::int, $4) ON CONFLICT (source) DO UPDATE SET reads = EXCLUDED.reads, \
    percent = EXCLUDED.percent, instance = EXCLUDED.instance, updated_at = now() RETURNING 1) \
    SELECT pg_notify('pgbridge_state', $1) FROM up";

/// A table's flag when it has none yet (the first instance's rules seed the shared state).
const SEED_SQL: &str = "INSERT INTO pgbridge.flags (source, reads, percent, instance) \
    VALUES ($1, $2, $3::text::int, $4) ON CONFLICT (source) DO NOTHING";

const HEARTBEAT_SQL: &str = "INSERT INTO pgbridge.instances (name, sessions, lag_seconds) \
    VALUES ($1, $2::text::bigint, $3::text::float8) ON CONFLICT (name) DO UPDATE SET seen = now(), \
    sessions = EXCLUDED.sessions, lag_seconds = EXCLUDED.lag_seconds";

const INSTANCES_SQL: &str = "SELECT name, to_char(seen AT TIME ZONE 'UTC', \
    'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), sessions, lag_seconds, \
    extract(epoch FROM now() - seen)::float8 FROM pgbridge.instances ORDER BY name";

/// Why a change could not be shared.
#[derive(Debug, thiserror::Error)]
#[error("the state database ([state] url, {url}) is unreachable: {why}; nothing was changed")]
pub struct Unreachable {
    pub url: String,
    pub why: String,
}

/// One instance, as `/api/status` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceView {
    pub name: String,
    /// When it last wrote its heartbeat (RFC 3339, UTC).
    pub seen: String,
    pub sessions: u64,
    pub lag_seconds: f64,
    /// Seen within the last few seconds.
    pub live: bool,
}

/// The shared state's connection, as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateReport {
    /// The state database (password masked).
    pub url: String,
    /// This instance's name.
    pub instance: String,
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Figures of this instance for its heartbeat: sessions open, mirror lag in seconds.
pub type Probe = Arc<dyn Fn() -> (u64, f64) + Send + Sync>;

/// This instance's side of the shared state.
pub struct SharedState {
    url: PgUrl,
    pub instance: String,
    reads: Arc<ReadFlags>,
    /// The write directions (src/state/writes.rs).
    pub writes: writes::SharedWrites,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    connected: AtomicBool,
    error: Mutex<Option<String>>,
    instances: ArcSwap<Vec<InstanceView>>,
    /// Held across a change made here and its publication, and while the shared flags are
    /// applied, so that a flag read before a change was published does not undo it here.
    pub changing: tokio::sync::Mutex<()>,
    /// The epochs of write switches this instance takes part in (src/state/epoch.rs).
    taking_part: Mutex<std::collections::HashSet<i64>>,
}

impl SharedState {
    pub fn new(
        url: PgUrl,
        instance: String,
        reads: Arc<ReadFlags>,
        writes: writes::SharedWrites,
    ) -> Arc<SharedState> {
        let state = Arc::new(SharedState {
            url,
            instance,
            reads,
            writes,
            client: tokio::sync::Mutex::new(None),
            connected: AtomicBool::new(false),
            error: Mutex::new(Some("not connected yet".into())),
            instances: ArcSwap::from_pointee(Vec::new()),
            changing: tokio::sync::Mutex::new(()),
            taking_part: Mutex::default(),
        });
        // The read gate weighs the other instances' lag too (their heartbeats').
        let weak = Arc::downgrade(&state);
        state.reads.set_peers(Arc::new(move || {
            let Some(s) = weak.upgrade() else {
                return Vec::new();
            };
            let peers = s.instances.load();
            peers
                .iter()
                .filter(|i| i.live && i.name != s.instance)
                .map(|i| (i.name.clone(), i.lag_seconds))
                .collect()
        }));
        state
    }

    /// Starts following the shared state, with `probe` for the heartbeats.
    pub fn spawn(self: &Arc<Self>, probe: Probe) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(writes::STARTUP_WAIT).await;
            if !lock(&state.writes.held_at_start).is_empty() {
                warn!("the shared write directions could not be read: writing with this instance's own");
            }
            state.writes.release_start();
        });
        let state = self.clone();
        tokio::spawn(async move { state.follow(probe).await })
    }

    /// Shares `table`'s write direction (after a switch made here).
    pub async fn publish_writes(
        &self,
        table: &TableName,
        direction: crate::writes::Direction,
        remote: bool,
    ) -> Result<(), Unreachable> {
        let client = self.client.lock().await.clone();
        let Some(client) = client else {
            return Err(self.unreachable("not connected".into()));
        };
        writes::SharedWrites::publish(&client, table, direction, remote, &self.instance)
            .await
            .map_err(|e| self.unreachable(crate::net::error_text(&e)))
    }

    pub fn report(&self) -> StateReport {
        StateReport {
            url: self.url.redacted(),
            instance: self.instance.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            error: lock(&self.error).clone(),
        }
    }

    /// The audit trail of every instance, newest first: (when, instance, line), at most
    /// `limit`, of `table` when given.
    pub async fn audit(
        &self,
        table: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(String, String, serde_json::Value)>, Unreachable> {
        let client = self.client.lock().await.clone();
        let Some(client) = client else {
            return Err(self.unreachable("not connected".into()));
        };
        let rows = client
            .query(
                "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                 instance, line::text FROM pgbridge.audit \
                 WHERE $1::text IS NULL OR line->>'table' = $1 ORDER BY id DESC LIMIT $2",
                &[&table, &limit],
            )
            .await
            .map_err(|e| self.unreachable(crate::net::error_text(&e)))?;
        Ok(rows
            .iter()
            .map(|r| {
                let line: String = r.get(2);
                let value = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
                (r.get(0), r.get(1), value)
            })
            .collect())
    }

    /// The instances as last read, this one included.
    pub fn instances(&self) -> Vec<InstanceView> {
        self.instances.load().as_ref().clone()
    }

    /// The other instances seen within [`LIVE_WITHIN`].
    pub fn other_live(&self) -> Vec<String> {
        self.instances
            .load()
            .iter()
            .filter(|i| i.live && i.name != self.instance)
            .map(|i| i.name.clone())
            .collect()
    }

    /// Refuses a change while the state database is unreachable (waiting a moment first, as
    /// the first connection after the start or a reconnection may be under way).
    pub async fn check_reachable(&self) -> Result<(), Unreachable> {
        let started = std::time::Instant::now();
        while !self.connected.load(Ordering::Relaxed) {
            if started.elapsed() > REACHABLE_WAIT {
                return Err(self.unreachable(lock(&self.error).clone().unwrap_or_default()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn unreachable(&self, why: String) -> Unreachable {
        Unreachable {
            url: self.url.redacted(),
            why,
        }
    }

    /// Shares `table`'s new read flag with every instance.
    pub async fn publish_reads(
        &self,
        table: &TableName,
        reads: ReadSource,
        percent: u8,
    ) -> Result<(), Unreachable> {
        let client = self.client.lock().await.clone();
        let Some(client) = client else {
            return Err(self.unreachable("not connected".into()));
        };
        let (source, percent) = (table.to_string(), percent.to_string());
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&source, &reads.as_str(), &percent, &self.instance];
        client
            .query(PUBLISH_SQL, &params)
            .await
            .map(|_| ())
            .map_err(|e| self.unreachable(crate::net::error_text(&e)))
    }

    /// Connects, listens and follows, reconnecting after every failure.
    async fn follow(self: Arc<Self>, probe: Probe) {
        let mut announced = false;
        loop {
            let why = match self.follow_once(&probe, &mut announced).await {
                Ok(()) => "the connection ended".to_string(),
                Err(e) => e,
            };
            if self.connected.swap(false, Ordering::Relaxed) || !announced {
                warn!(error = %why, url = %self.url.redacted(), "the state database is unreachable: serving with the flags known, refusing changes");
                announced = true;
            }
            *lock(&self.error) = Some(why);
            *self.client.lock().await = None;
            metrics::gauge!("pgbridge_state_connected").set(0.0);
            tokio::time::sleep(REREAD).await;
        }
    }

    async fn follow_once(
        self: &Arc<Self>,
        probe: &Probe,
        announced: &mut bool,
    ) -> Result<(), String> {
        let text = |e: tokio_postgres::Error| crate::net::error_text(&e);
        let (client, mut connection) = self.url.connect().await.map_err(text)?;
        let notified = Arc::new(tokio::sync::Notify::new());
        let (ended_tx, mut ended) = tokio::sync::oneshot::channel::<String>();
        let n = notified.clone();
        let pump = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let why = loop {
                match messages.next().await {
                    Some(Ok(AsyncMessage::Notification(_))) => n.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break crate::net::error_text(&e),
                    None => break "the connection ended".to_string(),
                }
            };
            let _ = ended_tx.send(why);
        });
        let _pump = AbortOnDrop(pump);
        let client = Arc::new(client);
        let schema = format!(
            "{SCHEMA_SQL}; {}; {}; {}",
            writes::SCHEMA_SQL,
            epoch::SCHEMA_SQL,
            audit::SCHEMA_SQL
        );
        client
            .batch_execute(&crate::mirror::under_schema_lock(&schema))
            .await
            .map_err(text)?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(text)?;
        self.seed(&client).await.map_err(text)?;
        *self.client.lock().await = Some(client.clone());
        self.connected.store(true, Ordering::Relaxed);
        *lock(&self.error) = None;
        metrics::gauge!("pgbridge_state_connected").set(1.0);
        if *announced {
            info!(url = %self.url.redacted(), "the state database is reachable again");
        }
        *announced = true;
        loop {
            self.heartbeat(&client, probe).await.map_err(text)?;
            self.apply(&client).await.map_err(text)?;
            self.answer_proposals(&client).await?;
            audit::flush(&client, &self.instance).await.map_err(text)?;
            self.writes.apply(&client).await.map_err(text)?;
            tokio::select! {
                _ = notified.notified() => {}
                _ = tokio::time::sleep(REREAD) => {}
                why = &mut ended => return Err(why.unwrap_or_else(|_| "the connection ended".into())),
            }
        }
    }

    /// Gives each table without a shared flag this instance's.
    async fn seed(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let flags = self.reads.load();
        for (table, source) in self.reads.list() {
            let percent = flags.percent(&table).unwrap_or(100).to_string();
            let name = table.to_string();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&name, &source.as_str(), &percent, &self.instance];
            client.execute(SEED_SQL, &params).await?;
        }
        Ok(())
    }

    /// Applies the shared flags that differ from this instance's.
    async fn apply(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let _no_change_in_flight = self.changing.lock().await;
        let rows = client
            .query(
                "SELECT source, reads, percent, instance FROM pgbridge.flags",
                &[],
            )
            .await?;
        for row in rows {
            let (source, reads, percent, by): (String, String, i32, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let (Some(table), Some(reads)) = (TableName::parse(&source), ReadSource::parse(&reads))
            else {
                continue;
            };
            let percent = percent.clamp(1, 100) as u8;
            if self.reads.apply_shared(&table, reads, percent) {
                info!(table = %table, reads = reads.as_str(), percent, by, "reads changed by the shared state");
            }
        }
        Ok(())
    }

    async fn heartbeat(&self, client: &Client, probe: &Probe) -> Result<(), tokio_postgres::Error> {
        let (sessions, lag) = probe();
        let (sessions, lag) = (sessions.to_string(), lag.to_string());
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&self.instance, &sessions, &lag];
        client.execute(HEARTBEAT_SQL, &params).await?;
        let rows = client.query(INSTANCES_SQL, &[]).await?;
        let list = rows
            .iter()
            .map(|r| InstanceView {
                name: r.get(0),
                seen: r.get(1),
                sessions: r.get::<_, i64>(2).max(0) as u64,
                lag_seconds: r.get(3),
                live: r.get::<_, f64>(4) < LIVE_WITHIN.as_secs_f64(),
            })
            .collect();
        self.instances.store(Arc::new(list));
        Ok(())
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
