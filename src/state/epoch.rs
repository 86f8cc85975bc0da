//! A write switch agreed by every live instance (src/writes/switch.rs, [`Agreement`]): the
//! switching instance proposes an epoch in `pgbridge.switches`; every other live instance,
//! told by the NOTIFY, holds the table's new writes, ends its own transactions that wrote it,
//! applies its own forward journal, and acknowledges in `pgbridge.switch_acks`; once all did,
//! the switching instance drains, flips the capture, and records the decision (`done`, with
//! the table's row in `pgbridge.writes`, in one statement); each instance then sets the
//! direction and releases. An instance that does not answer within the switch's timeout makes
//! it abort (`aborted`: every instance releases, nothing changed), or, with `force`, is left
//! out: it adopts the decision when it comes back, its writes held until it caught up
//! (src/state/writes.rs). A decision is recorded once (`WHERE state = 'proposed'`): an instance
//! that waited past the deadline without one aborts the epoch itself, so none holds forever.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{info, warn};

use super::{lock, SharedState};
use crate::rules::TableName;
use crate::writes::switch::{Agreed, Agreement};
use crate::writes::Direction;

pub(super) const SCHEMA_SQL: &str = "CREATE TABLE IF NOT EXISTS pgbridge.switches (\
    epoch bigserial PRIMARY KEY, source text NOT NULL, direction text NOT NULL, \
    initiator text NOT NULL, state text NOT NULL DEFAULT 'proposed', \
    deadline timestamptz NOT NULL, created_at timestamptz NOT NULL DEFAULT now()); \
    CREATE TABLE IF NOT EXISTS pgbridge.switch_acks (epoch bigint NOT NULL, instance text NOT NULL, \
    ok boolean NOT NULL, error text, at timestamptz NOT NULL DEFAULT now(), \
    PRIMARY KEY (epoch, instance)); \
    ALTER TABLE pgbridge.switch_acks ADD COLUMN IF NOT EXISTS applied boolean NOT NULL DEFAULT false";

/// The share of a switch's bound within which an instance answers whether it is ready.
const ANSWER_SHARE: f64 = 0.75;

/// How long the switching instance waits, after the decision, for the others to say they set
/// the direction (so that every live instance routes the new way when the switch answers).
const APPLIED_WAIT: Duration = Duration::from_secs(3);

/// How long past its deadline a waiting instance gives the switching one to decide.
const GRACE: Duration = Duration::from_secs(10);

const PROPOSE_SQL: &str =
    "WITH p AS (INSERT INTO pgbridge.switches (source, direction, initiator, \
    deadline) VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING epoch) \
    SELECT epoch, pg_notify('pgbridge_state', 'switch') FROM p";

pub(super) const ACK_SQL: &str =
    "WITH a AS (INSERT INTO pgbridge.switch_acks (epoch, instance, ok, error) \
    VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1) \
    SELECT pg_notify('pgbridge_state', 'ack') FROM a";

/// `$1` epoch, `$2` the state; with a direction made, the table's row too.
const DECIDE_SQL: &str = "WITH d AS (UPDATE pgbridge.switches SET state = $2 \
    WHERE epoch = $1 AND state = 'proposed' RETURNING source, direction, initiator), \
    w AS (INSERT INTO pgbridge.writes (source, direction, remote, instance) \
    SELECT source, direction, $3, initiator FROM d WHERE $2 = 'done' \
    ON CONFLICT (source) DO UPDATE SET direction = EXCLUDED.direction, remote = EXCLUDED.remote, \
    instance = EXCLUDED.instance, updated_at = now() RETURNING 1) \
    SELECT pg_notify('pgbridge_state', 'decided') FROM d";

impl SharedState {
    pub(super) async fn connected_client(&self) -> Result<Arc<Client>, String> {
        self.client
            .lock()
            .await
            .clone()
            .ok_or_else(|| "the state database is unreachable".to_string())
    }

    /// The epochs proposed by others that this instance has not answered: it takes part.
    pub(super) async fn answer_proposals(self: &Arc<Self>, client: &Client) -> Result<(), String> {
        let rows = client
            .query(
                "SELECT s.epoch, s.source, s.direction FROM pgbridge.switches s \
                 WHERE s.state = 'proposed' AND s.initiator <> $1 AND NOT EXISTS \
                 (SELECT 1 FROM pgbridge.switch_acks a WHERE a.epoch = s.epoch AND a.instance = $1)",
                &[&self.instance],
            )
            .await
            .map_err(|e| crate::net::error_text(&e))?;
        for row in rows {
            let (epoch, source, direction): (i64, String, String) =
                (row.get(0), row.get(1), row.get(2));
            let Some(table) = TableName::parse(&source) else {
                continue;
            };
            if direction == super::agree_reads::READS_ON_SECONDARY {
                self.answer_reads(client, epoch, &table).await?;
                continue;
            }
            let Some(to) = Direction::parse(&direction) else {
                continue;
            };
            if !lock(&self.taking_part).insert(epoch) {
                continue;
            }
            let state = self.clone();
            tokio::spawn(async move {
                if let Err(e) = state.take_part(epoch, &table, to).await {
                    warn!(epoch, table = %table, error = %e, "taking part in a write switch failed");
                }
            });
        }
        Ok(())
    }

    /// This instance's part of epoch `epoch`: hold, end, drain, acknowledge, then wait for the
    /// decision and follow it.
    async fn take_part(&self, epoch: i64, table: &TableName, to: Direction) -> Result<(), String> {
        let flags = self.writes.flags.clone();
        let _one = flags.switching.lock().await;
        let client = self.connected_client().await?;
        let row = client
            .query_one(
                "SELECT greatest(extract(epoch FROM deadline - now()), 0)::float8 \
                 FROM pgbridge.switches WHERE epoch = $1",
                &[&epoch],
            )
            .await
            .map_err(|e| crate::net::error_text(&e))?;
        let within = Duration::from_secs_f64(row.get::<_, f64>(0));
        let started = Instant::now();
        flags.hold(table);
        info!(epoch, table = %table, to = to.as_str(), "taking part in a write switch: writes held");
        let from = flags.load().get(table);
        // Not ready is answered well before the switching instance's own bound, so that it
        // hears it: past that bound, a forced switch leaves out only instances that said nothing.
        let answer_by = within.mul_f64(ANSWER_SHARE);
        let ready = self.get_ready(table, from, answer_by, started).await;
        let (ok, error) = match &ready {
            Ok(()) => (true, None),
            Err(e) => (false, Some(e.clone())),
        };
        let acked = client
            .query(ACK_SQL, &[&epoch, &self.instance, &ok, &error])
            .await;
        let decision = match acked {
            Ok(_) if ok => self.await_decision(&client, epoch, within + GRACE).await,
            Ok(_) => Ok(None),
            Err(e) => Err(crate::net::error_text(&e)),
        };
        let result = match decision {
            Ok(Some(remote)) => {
                let set = flags
                    .set(table, to, (to != Direction::Primary).then_some(remote))
                    .map(|_| info!(epoch, table = %table, to = to.as_str(), "write switch agreed: direction set"))
                    .map_err(|e| e.to_string());
                let applied = client
                    .execute(
                        "UPDATE pgbridge.switch_acks SET applied = true WHERE epoch = $1 AND instance = $2",
                        &[&epoch, &self.instance],
                    )
                    .await;
                if let Err(e) = applied {
                    warn!(epoch, error = %crate::net::error_text(&e), "cannot say the direction was set");
                }
                set
            }
            Ok(None) => {
                info!(epoch, table = %table, "write switch aborted: writes released");
                Ok(())
            }
            Err(e) => Err(e),
        };
        flags.release(table);
        result
    }

    /// Holds until this instance's own transactions that wrote `table` ended and (from the
    /// primary) its own forward journal is applied.
    async fn get_ready(
        &self,
        table: &TableName,
        from: Direction,
        within: Duration,
        started: Instant,
    ) -> Result<(), String> {
        let flags = &self.writes.flags;
        if !flags.wait_inactive(table, within).await {
            return Err(format!(
                "{} sessions of {} were still in transactions that wrote {table}",
                flags.active(table),
                self.instance
            ));
        }
        let left = within.saturating_sub(started.elapsed());
        if from == Direction::Primary && !self.writes.forward_applied(left).await {
            return Err(format!(
                "the forward mirror of {} had not applied what it journaled",
                self.instance
            ));
        }
        Ok(())
    }

    /// The epoch's decision: `Some(remote)` when done, `None` when aborted (by this instance
    /// when none came within `within`).
    async fn await_decision(
        &self,
        client: &Client,
        epoch: i64,
        within: Duration,
    ) -> Result<Option<bool>, String> {
        let started = Instant::now();
        loop {
            let row = client
                .query_one(
                    "SELECT s.state, coalesce(w.remote, false) FROM pgbridge.switches s \
                     LEFT JOIN pgbridge.writes w ON w.source = s.source WHERE s.epoch = $1",
                    &[&epoch],
                )
                .await
                .map_err(|e| crate::net::error_text(&e))?;
            match row.get::<_, String>(0).as_str() {
                "done" => return Ok(Some(row.get(1))),
                "aborted" => return Ok(None),
                _ => {}
            }
            if started.elapsed() > within {
                let aborted = client
                    .query(DECIDE_SQL, &[&epoch, &"aborted", &false])
                    .await
                    .map_err(|e| crate::net::error_text(&e))?;
                if !aborted.is_empty() {
                    warn!(epoch, "no decision came for the write switch: aborted it");
                    return Ok(None);
                }
                continue;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Agreement for SharedState {
    fn agree<'a>(
        &'a self,
        table: &'a TableName,
        to: Direction,
        within: Duration,
        force: bool,
    ) -> Agreed<'a, Result<Option<i64>, String>> {
        Box::pin(self.propose(table, to.as_str(), within, force))
    }

    fn decide<'a>(
        &'a self,
        epoch: i64,
        _table: &'a TableName,
        made: Option<(Direction, bool)>,
    ) -> Agreed<'a, Result<bool, String>> {
        Box::pin(async move {
            let client = self.connected_client().await?;
            let (state, remote) = match made {
                Some((_, remote)) => ("done", remote),
                None => ("aborted", false),
            };
            let rows = client
                .query(DECIDE_SQL, &[&epoch, &state, &remote])
                .await
                .map_err(|e| crate::net::error_text(&e))?;
            if made.is_some() && !rows.is_empty() {
                self.await_applied(&client, epoch).await;
            }
            Ok(!rows.is_empty())
        })
    }
}

impl SharedState {
    /// Proposes switching `table` to `direction` (a write direction, or `reads:secondary`) to
    /// the other live instances and waits until each acknowledged it ready; one not ready, or
    /// (without `force`) silent past `within`, aborts it. The epoch, if any instance was asked.
    pub(super) async fn propose(
        &self,
        table: &TableName,
        direction: &str,
        within: Duration,
        force: bool,
    ) -> Result<Option<i64>, String> {
        let others: HashSet<String> = self.other_live().into_iter().collect();
        if others.is_empty() {
            return Ok(None);
        }
        let client = self.connected_client().await?;
        let text = |e: tokio_postgres::Error| crate::net::error_text(&e);
        let source = table.to_string();
        let row = client
            .query_one(
                PROPOSE_SQL,
                &[&source, &direction, &self.instance, &within.as_secs_f64()],
            )
            .await
            .map_err(text)?;
        let epoch: i64 = row.get(0);
        info!(epoch, table = %table, direction, others = ?others, "switch proposed to the other instances");
        let started = Instant::now();
        loop {
            let acks = client
                .query(
                    "SELECT instance, ok, coalesce(error, '') FROM pgbridge.switch_acks WHERE epoch = $1",
                    &[&epoch],
                )
                .await
                .map_err(text)?;
            if let Some(r) = acks.iter().find(|r| !r.get::<_, bool>(1)) {
                let why = format!(
                    "instance {} is not ready: {}",
                    r.get::<_, String>(0),
                    r.get::<_, String>(2)
                );
                return Err(self.abort_with(&client, epoch, why).await);
            }
            let answered: HashSet<String> = acks.iter().map(|r| r.get(0)).collect();
            let missing: Vec<&String> = others.difference(&answered).collect();
            if missing.is_empty() {
                return Ok(Some(epoch));
            }
            if started.elapsed() > within {
                if force {
                    warn!(epoch, missing = ?missing, "switch forced past instances that did not answer: they adopt it when back");
                    return Ok(Some(epoch));
                }
                let mut names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                names.sort_unstable();
                let why = format!(
                    "instances {} did not answer within {} ms",
                    names.join(", "),
                    within.as_millis()
                );
                return Err(self.abort_with(&client, epoch, why).await);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (up to [`APPLIED_WAIT`]) until every instance that acknowledged epoch `epoch`
    /// says it set the direction; one that does not is logged (it holds the table's writes
    /// until it has).
    async fn await_applied(&self, client: &Client, epoch: i64) {
        let started = Instant::now();
        loop {
            let pending = client
                .query(
                    "SELECT instance FROM pgbridge.switch_acks WHERE epoch = $1 AND ok AND NOT applied",
                    &[&epoch],
                )
                .await;
            match pending {
                Ok(rows) if rows.is_empty() => return,
                Ok(rows) if started.elapsed() > APPLIED_WAIT => {
                    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    warn!(epoch, instances = ?names, "the write switch answers before these instances said they set the direction");
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => {
                    warn!(epoch, error = %crate::net::error_text(&e), "cannot see whether the others set the direction");
                    return;
                }
            }
        }
    }

    async fn abort_with(&self, client: &Client, epoch: i64, why: String) -> String {
        if let Err(e) = client
            .query(DECIDE_SQL, &[&epoch, &"aborted", &false])
            .await
        {
            warn!(epoch, error = %crate::net::error_text(&e), "cannot record the aborted switch");
        }
        why
    }
}
