//! Two-phase commit of a transaction that wrote both a table whose writes are on a secondary
//! of another server and a table of the primary (src/capture/drive/lockstep.rs).
//!
//! The secondary's part is prepared first (`PREPARE TRANSACTION`, durable there), under a
//! name that carries the primary transaction's id: `pgbridge:<xid>:<session>`. Then the
//! client's COMMIT goes to the primary, which decides: the prepared part is committed when the
//! primary committed, rolled back when it did not (`pg_xact_status`). The session does this
//! itself right after the COMMIT's reply; a part it left behind (pgbridge killed in between,
//! the secondary unreachable for a moment) is settled by [`settle_orphans`], which every
//! instance runs every few seconds, so none is left holding its locks. Only the secondary
//! needs `max_prepared_transactions` > 0: the primary commits in one phase, and its commit is
//! the decision.

use std::time::Duration;

use tokio_postgres::Client;
use tracing::{info, warn};

/// Every prepared transaction of pgbridge's is named with this.
pub const PREFIX: &str = "pgbridge:";

/// How old a prepared transaction is before [`settle_orphans`] may settle it (its session is
/// settling it itself until then).
const ORPHAN_AGE: Duration = Duration::from_secs(5);

/// The name of the secondary's part of primary transaction `xid`.
pub fn gid(xid: i64, session: u64) -> String {
    format!("{PREFIX}{xid}:{session}")
}

/// The primary transaction id in a name [`gid`] made.
pub fn xid_of(gid: &str) -> Option<i64> {
    gid.strip_prefix(PREFIX)?.split(':').next()?.parse().ok()
}

/// What to do with a prepared part, from what the primary says of its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Rollback,
    /// Not decided yet (in progress), or not known: left prepared for now.
    Wait,
}

impl Decision {
    /// From `pg_xact_status`'s answer.
    pub fn of(status: Option<&str>) -> Decision {
        match status {
            Some("committed") => Decision::Commit,
            Some("aborted") => Decision::Rollback,
            _ => Decision::Wait,
        }
    }

    /// The statement that carries it out on the secondary.
    pub fn statement(self, gid: &str) -> Option<String> {
        let gid = crate::rules::quote_literal(gid);
        match self {
            Decision::Commit => Some(format!("COMMIT PREPARED {gid}")),
            Decision::Rollback => Some(format!("ROLLBACK PREPARED {gid}")),
            Decision::Wait => None,
        }
    }
}

/// Counts a prepared part settled.
pub fn count(decision: Decision, by: &'static str) {
    let outcome = match decision {
        Decision::Commit => "committed",
        Decision::Rollback => "rolled_back",
        Decision::Wait => return,
    };
    metrics::counter!("pgbridge_two_phase_total", "outcome" => outcome, "by" => by).increment(1);
}

/// Settles pgbridge's prepared transactions on the secondary older than a few seconds, by
/// their primary transactions' outcomes; returns how many it settled.
pub async fn settle_orphans(primary: &Client, secondary: &Client) -> Result<usize, String> {
    let rows = secondary
        .query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() \
             AND starts_with(gid, $1) AND prepared < now() - make_interval(secs => $2)",
            &[&PREFIX, &ORPHAN_AGE.as_secs_f64()],
        )
        .await
        .map_err(|e| crate::net::error_text(&e))?;
    let mut settled = 0;
    for row in rows {
        let gid: String = row.get(0);
        let Some(xid) = xid_of(&gid) else { continue };
        let status: Option<String> = primary
            .query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid.to_string()])
            .await
            .map_err(|e| crate::net::error_text(&e))?
            .get(0);
        let decision = Decision::of(status.as_deref());
        let Some(sql) = decision.statement(&gid) else {
            warn!(
                gid,
                ?status,
                "a prepared transaction waits for its primary transaction"
            );
            continue;
        };
        match secondary.batch_execute(&sql).await {
            Ok(()) => {
                info!(
                    gid,
                    ?decision,
                    "settled a prepared transaction its session left"
                );
                count(decision, "recovery");
                settled += 1;
            }
            // Settled by its session meanwhile.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {}
            Err(e) => return Err(crate::net::error_text(&e)),
        }
    }
    Ok(settled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_carries_the_primary_transaction() {
        let g = gid(123456789012, 7);
        assert_eq!(g, "pgbridge:123456789012:7");
        assert_eq!(xid_of(&g), Some(123456789012));
        assert_eq!(xid_of("someone_else:1"), None);
        assert_eq!(xid_of("pgbridge:x:1"), None);
    }

    #[test]
    fn the_primary_decides() {
        assert_eq!(Decision::of(Some("committed")), Decision::Commit);
        assert_eq!(Decision::of(Some("aborted")), Decision::Rollback);
        assert_eq!(Decision::of(Some("in progress")), Decision::Wait);
        assert_eq!(Decision::of(None), Decision::Wait);
        assert_eq!(
            Decision::Commit.statement("pgbridge:1:2").as_deref(),
            Some("COMMIT PREPARED 'pgbridge:1:2'")
        );
        assert_eq!(Decision::Wait.statement("pgbridge:1:2"), None);
    }
}
