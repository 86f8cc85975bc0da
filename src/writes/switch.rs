//! The write switch (docs/DESIGN.md, "The write switch"): hold the table's new writes at the
//! proxy, let the transactions that wrote it end, drain the mirror that carried its writes,
//! flip the direction (durably), release.
//!
//! To `secondary`: the write view is installed first (before anything is held), the gate
//! judges the evidence ([`super::gate`]), then: hold; wait until no session is in a
//! transaction that wrote the table; wait until the forward applier applied every journaled
//! transaction; start the reverse capture on the target; write the new direction; release.
//! Back to `primary`: hold; wait for the transactions; wait until the reverse mirror applied
//! every captured change; stop the reverse capture; write; release. `complete` is the same
//! with the writes staying on the secondary. Each wait is bounded by the request's timeout
//! (whatever is left of it): past it the switch is aborted, the capture left as it was,
//! everything released, and the reason returned. Sessions whose writes were held see a pause
//! and then run on the side the switch left the table on: no write is lost, applied twice or
//! reordered, because none is in flight while the direction flips.

use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use super::gate::{self, Evidence};
use super::install::{self, InstallError};
use super::persist::PersistError;
use super::{Direction, WriteFlags};
use crate::config::PgUrl;
use crate::mirror::reverse::{self, ReverseHandle};
use crate::mirror::{ApplierHandle, Journal};
use crate::reads::FlagOptions;
use crate::rules::{Rule, TableName};

/// What the operator asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub to: Direction,
    pub reason: String,
    pub force: bool,
    pub who: String,
    /// How long the switch may hold the table's writes.
    pub timeout: Duration,
}

/// What the switch acts on.
pub struct Ports<'a> {
    pub primary: &'a PgUrl,
    pub secondary: &'a PgUrl,
    pub journal: &'a Journal,
    pub applier: &'a ApplierHandle,
    pub reverse: &'a ReverseHandle,
    pub bounds: &'a FlagOptions,
    /// The other instances sharing the state, when there are any (src/state/epoch.rs).
    pub agreement: Option<&'a dyn Agreement>,
}

/// A future of the agreement's.
pub type Agreed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How the instances sharing one state agree on a write switch: every other live instance
/// holds the table's writes, ends its own transactions that wrote it and applies its own
/// forward journal, and says so, before the switching one flips; the decision is recorded
/// once, so that an instance that did not answer adopts it later.
pub trait Agreement: Sync {
    /// Proposes the switch and waits (at most `within`) until every other live instance is
    /// ready; with `force`, goes on without those that did not answer. The epoch, if any
    /// instance was asked.
    fn agree<'a>(
        &'a self,
        table: &'a TableName,
        to: Direction,
        within: Duration,
        force: bool,
    ) -> Agreed<'a, Result<Option<i64>, String>>;

    /// Records the epoch's outcome (`remote` for a switch made); false when it was decided
    /// already (aborted by a waiting instance).
    fn decide<'a>(
        &'a self,
        epoch: i64,
        table: &'a TableName,
        made: Option<(Direction, bool)>,
    ) -> Agreed<'a, Result<bool, String>>;
}

/// A switch made (or nothing to do).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub source: String,
    pub target: String,
    pub writes: Direction,
    pub previous: Direction,
    pub changed: bool,
    pub forced: bool,
    /// The gate's reasons that `force` overrode.
    pub overridden: Vec<String>,
    pub reason: String,
    pub who: String,
    /// How long the table's new writes were held.
    pub paused_ms: u64,
    pub ts: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// Refused by the gate: every reason.
    #[error("refused: {}", .0.join("; "))]
    Refused(Vec<String>),
    /// Aborted while held: everything released, nothing changed.
    #[error("aborted: {0}")]
    Aborted(String),
    #[error("{0}")]
    Install(#[from] InstallError),
    #[error("{0}")]
    Persist(#[from] PersistError),
    #[error("cannot write the audit log: {0}")]
    Audit(std::io::Error),
}

/// Switches the writes of `rule`'s table as `req` asks; `evidence` carries what the caller
/// knows (the jobs' results), the rest is gathered here.
pub async fn switch(
    flags: &WriteFlags,
    rule: &Rule,
    req: &Request,
    mut evidence: Evidence,
    ports: &Ports<'_>,
) -> Result<Outcome, SwitchError> {
    let _one = flags.switching.lock().await;
    let table = &rule.source;
    let from = flags.load().get(table);
    let mut outcome = outcome(rule, req, from);
    if from == req.to {
        return Ok(outcome);
    }
    let refusals = judge(&mut evidence, from, rule, req.to, ports).await?;
    if !refusals.hard.is_empty() || (!refusals.soft.is_empty() && !req.force) {
        let mut all = refusals.hard;
        all.extend(refusals.soft);
        return Err(SwitchError::Refused(all));
    }
    outcome.forced = !refusals.soft.is_empty();
    outcome.overridden = refusals.soft;
    let started = Instant::now();
    flags.hold(table);
    let remote = (req.to == Direction::Secondary).then_some(!evidence.same_database);
    let flipped = flip(flags, rule, req, (from, remote), started, ports).await;
    flags.release(table);
    outcome.paused_ms = started.elapsed().as_millis() as u64;
    match flipped {
        Ok(()) => {
            info!(table = %table, from = from.as_str(), to = req.to.as_str(), paused_ms = outcome.paused_ms, "writes switched");
            super::audit::append(&ports.bounds.audit_log, &outcome, &evidence)
                .map_err(SwitchError::Audit)?;
            outcome.changed = true;
            metrics::histogram!("pgbridge_write_switch_pause_seconds", "table" => outcome.source.clone())
                .record(outcome.paused_ms as f64 / 1000.0);
            Ok(outcome)
        }
        Err(e) => {
            warn!(table = %table, error = %e, "write switch aborted");
            metrics::counter!("pgbridge_write_switch_aborted_total", "table" => table.to_string())
                .increment(1);
            Err(e)
        }
    }
}

/// What a switch would do (`--dry-run`): nothing is held, flipped or audited.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub dry_run: bool,
    pub source: String,
    pub target: String,
    pub writes: Direction,
    pub previous: Direction,
    pub would_change: bool,
    /// Why it would be refused (empty: it would go ahead).
    pub refused: Vec<String>,
    /// The gate's reasons `force` would override.
    pub overridden: Vec<String>,
    /// The gate's evidence now, as the audit line would record it.
    pub evidence: serde_json::Value,
}

/// What [`switch`] would do with `req`: the gate's verdict on the evidence now. For a switch
/// to the secondary it prepares the write view as the switch would (that changes no data and
/// no flag), to learn whether the target is in the primary's database.
pub async fn preview(
    flags: &WriteFlags,
    rule: &Rule,
    req: &Request,
    mut evidence: Evidence,
    ports: &Ports<'_>,
) -> Result<Preview, SwitchError> {
    let from = flags.load().get(&rule.source);
    let mut preview = Preview {
        dry_run: true,
        source: rule.source.to_string(),
        target: rule.target.to_string(),
        writes: req.to,
        previous: from,
        would_change: from != req.to,
        refused: Vec::new(),
        overridden: Vec::new(),
        evidence: serde_json::Value::Null,
    };
    if !preview.would_change {
        return Ok(preview);
    }
    let refusals = judge(&mut evidence, from, rule, req.to, ports).await?;
    preview.refused = refusals.hard;
    match req.force {
        true => preview.overridden = refusals.soft,
        false => preview.refused.extend(refusals.soft),
    }
    preview.evidence = super::audit::evidence(&evidence);
    Ok(preview)
}

/// The gate's verdict on a switch from `from` to `to`, with the evidence it gathers itself.
async fn judge(
    evidence: &mut Evidence,
    from: Direction,
    rule: &Rule,
    to: Direction,
    ports: &Ports<'_>,
) -> Result<gate::Refusals, SwitchError> {
    evidence.from = from;
    gather(evidence, rule, to, ports).await?;
    Ok(gate::refusals(to, evidence, ports.bounds))
}

/// The evidence the switch gathers itself: the rule, both mirrors, and for a switch to the
/// secondary (its write view installed first) whether the target is the primary's database.
async fn gather(
    e: &mut Evidence,
    rule: &Rule,
    to: Direction,
    ports: &Ports<'_>,
) -> Result<(), SwitchError> {
    e.rule_checked = rule.source_columns.is_some();
    e.forward = Some(ports.applier.report());
    let reverse = ports.reverse.stats().report();
    e.reverse_connected = reverse.primary_connected && reverse.secondary_connected;
    if to == Direction::Secondary {
        let secondary = install::connect(ports.secondary)
            .await
            .map_err(InstallError::from)?;
        install::install(&secondary, rule).await?;
        let primary = install::connect(ports.primary)
            .await
            .map_err(InstallError::from)?;
        e.same_database = install::visible(&primary, rule).await?;
        e.rows_outside = install::rows_outside(&primary, rule).await?;
        if !e.same_database {
            e.two_phase = Some(install::two_phase(&secondary).await?);
        }
    }
    Ok(())
}

fn outcome(rule: &Rule, req: &Request, from: Direction) -> Outcome {
    Outcome {
        source: rule.source.to_string(),
        target: rule.target.to_string(),
        writes: if from == req.to { from } else { req.to },
        previous: from,
        changed: false,
        forced: false,
        overridden: Vec::new(),
        reason: req.reason.clone(),
        who: req.who.clone(),
        paused_ms: 0,
        ts: crate::divergence::record::rfc3339(std::time::SystemTime::now()),
    }
}

/// The held part: the transactions end, the mirror drains, the direction flips.
async fn flip(
    flags: &WriteFlags,
    rule: &Rule,
    req: &Request,
    (from, remote): (Direction, Option<bool>),
    started: Instant,
    ports: &Ports<'_>,
) -> Result<(), SwitchError> {
    let table = &rule.source;
    let left = || req.timeout.saturating_sub(started.elapsed());
    if !flags.wait_inactive(table, left()).await {
        return Err(SwitchError::Aborted(format!(
            "{} sessions were still in transactions that wrote {table} after {} ms",
            flags.active(table),
            req.timeout.as_millis()
        )));
    }
    let epoch = match ports.agreement {
        Some(a) => a
            .agree(table, req.to, left(), req.force)
            .await
            .map_err(SwitchError::Aborted)?,
        None => None,
    };
    let made = drain_and_flip(flags, rule, req, (from, remote), &left, ports, epoch).await;
    if let (Err(_), Some(epoch), Some(a)) = (&made, epoch, ports.agreement) {
        if let Err(e) = a.decide(epoch, table, None).await {
            warn!(table = %table, epoch, error = %e, "cannot record the aborted switch");
        }
    }
    made
}

/// The flip itself, once every instance is ready: the mirrors drained, the reverse capture
/// started or stopped, the decision recorded, the direction set.
async fn drain_and_flip(
    flags: &WriteFlags,
    rule: &Rule,
    req: &Request,
    (from, remote): (Direction, Option<bool>),
    left: &(dyn Fn() -> Duration + Sync),
    ports: &Ports<'_>,
    epoch: Option<i64>,
) -> Result<(), SwitchError> {
    let table = &rule.source;
    let secondary = install::connect(ports.secondary)
        .await
        .map_err(InstallError::from)?;
    if from == Direction::Primary {
        let last = ports.journal.last_id();
        tracing::info!(table = %table, last, applied = ports.applier.applied(), "write switch: draining the forward mirror");
        if ports.applier.wait_applied(last, left()).await.is_err() {
            return Err(SwitchError::Aborted(format!(
                "the forward mirror had not applied transaction {last} after {} ms",
                req.timeout.as_millis()
            )));
        }
        reverse::enable(&secondary, rule)
            .await
            .map_err(InstallError::from)?;
    } else {
        if !ports.reverse.wait_drained(left()).await {
            return Err(SwitchError::Aborted(format!(
                "the reverse mirror had not applied every change of {table} after {} ms",
                req.timeout.as_millis()
            )));
        }
        reverse::disable(&secondary, rule)
            .await
            .map_err(InstallError::from)?;
    }
    if let (Some(epoch), Some(a)) = (epoch, ports.agreement) {
        let remote_now = remote.unwrap_or(flags.load().remote);
        let decided = a.decide(epoch, table, Some((req.to, remote_now))).await;
        match decided {
            Ok(true) => {}
            Ok(false) => {
                return Err(SwitchError::Aborted(
                    "an instance gave up waiting for the decision and aborted the switch".into(),
                ))
            }
            Err(e) => {
                return Err(SwitchError::Aborted(format!(
                    "cannot record the decision: {e}"
                )))
            }
        }
    }
    if let Err(e) = flags.set(table, req.to, remote) {
        if from == Direction::Primary {
            let _ = reverse::disable(&secondary, rule).await;
        }
        return Err(e.into());
    }
    Ok(())
}
