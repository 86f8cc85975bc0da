//! The write switch's gate: the evidence a switch of a table's writes is judged on, and every
//! reason it is refused. Pure; [`super::switch`] gathers the evidence.
//!
//! A switch to `secondary` needs: the rule checked online (its columns known), the target in
//! the primary's own database (this version executes a switched table's statements in the
//! client's own session, so its transactions stay atomic; across two servers the gate says
//! so), a finished backfill, a clean verify no older than `[admin] gate_max_verify_age_secs`,
//! the forward mirror within the read gate's bounds with nothing parked, and no mark of a write
//! the mirror missed. (Source rows outside the rule's `where` stay in the legacy table, part of
//! the write view, `src/sql/write_rest.rs`; they are counted for the record, and would refuse
//! a switch across two servers.) `force`
//! overrides everything but the first two and the repair mark (a write the mirror missed
//! would be lost for good: no repair runs from the legacy table once the target is the
//! authority), and is recorded with what it overrode. The way
//! back to `primary` needs only the reverse mirror running; `complete` needs the writes on the
//! secondary.

use crate::mirror::status::MirrorReport;
use crate::reads::FlagOptions;

use super::Direction;

/// What a switch is judged on.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub from: Direction,
    /// The rule's source columns are known (it was checked online).
    pub rule_checked: bool,
    /// The target's write view is visible from the primary: one database.
    pub same_database: bool,
    /// The last backfill's state, if any ran.
    pub backfill: Option<String>,
    /// The last verify: clean, and its age in seconds.
    pub last_verify: Option<(bool, u64)>,
    pub max_verify_age_secs: u64,
    pub forward: Option<MirrorReport>,
    /// The table is marked as having missed a write (src/mirror/stale.rs).
    pub needs_repair: bool,
    /// Source rows outside the rule's `where`.
    pub rows_outside: u64,
    /// For a target on another server: whether it can prepare transactions
    /// (`max_prepared_transactions` > 0), for transactions that also write the primary.
    pub two_phase: Option<bool>,
    /// The reverse mirror's applier is connected to both sides.
    pub reverse_connected: bool,
    /// Transactions seen writing the table and another table of the primary.
    pub mixed_transactions: u64,
}

/// The refusals of a switch: those `force` overrides, and those it does not.
#[derive(Debug, Default, PartialEq)]
pub struct Refusals {
    pub hard: Vec<String>,
    pub soft: Vec<String>,
}

impl Refusals {
    pub fn is_empty(&self) -> bool {
        self.hard.is_empty() && self.soft.is_empty()
    }
}

/// Why a switch to `to` must be refused.
pub fn refusals(to: Direction, e: &Evidence, bounds: &FlagOptions) -> Refusals {
    let mut r = Refusals::default();
    match (e.from, to) {
        (from, to) if from == to => {}
        (Direction::Primary, Direction::Secondary) => to_secondary(e, bounds, &mut r),
        (Direction::Secondary, Direction::Primary) if !e.reverse_connected => r
            .soft
            .push("the reverse mirror is not connected to both databases".into()),
        (Direction::Secondary, Direction::Primary) => {}
        (Direction::Secondary, Direction::Complete) => {}
        (Direction::Complete, _) => r.hard.push(
            "the migration is complete: the reverse mirror stopped and the legacy table no longer follows"
                .into(),
        ),
        (Direction::Primary, Direction::Complete) => {
            r.hard.push("writes must be on the secondary before the migration is complete".into())
        }
        (_, _) => {}
    }
    r
}

fn to_secondary(e: &Evidence, bounds: &FlagOptions, r: &mut Refusals) {
    if !e.rule_checked {
        r.hard.push(
            "the rule's columns are unknown (the rule was not checked against the databases)"
                .into(),
        );
    }
    if !e.same_database {
        r.soft.push(
            "the target is on another server: statements on this table will run there in step \
             with the client's transaction over the simple protocol; prepared writes (the \
             extended protocol) of it will be refused with SQLSTATE 0A000"
                .into(),
        );
    }
    if !e.same_database && e.mixed_transactions > 0 && e.two_phase == Some(false) {
        r.soft.push(format!(
            "{} transactions were seen writing this table and another table of the primary; the \
             target is on another server whose max_prepared_transactions is 0, so such \
             transactions would be refused (SQLSTATE 0A000) rather than committed on both",
            e.mixed_transactions
        ));
    }
    match e.backfill.as_deref() {
        Some("done") => {}
        Some(state) => r
            .soft
            .push(format!("the last backfill is {state}, not done")),
        None => r.soft.push("no backfill ran".into()),
    }
    match e.last_verify {
        None => r.soft.push("no verify ran".into()),
        Some((false, _)) => r.soft.push("the last verify found differences".into()),
        Some((true, age)) if age > e.max_verify_age_secs => r.soft.push(format!(
            "the last clean verify is {age}s old (gate_max_verify_age_secs = {})",
            e.max_verify_age_secs
        )),
        Some(_) => {}
    }
    match &e.forward {
        None => r.hard.push("the mirror is not running".into()),
        Some(m) => r
            .soft
            .extend(crate::reads::flags::gate::mirror_refusals(m, bounds)),
    }
    if e.needs_repair {
        // Forcing past it would lose the missed write for good: once the target is the
        // authority no repair runs from the legacy table.
        r.hard.push(
            "the table is marked as needing a repair (a write the mirror missed): repair it first"
                .into(),
        );
    }
    if e.rows_outside > 0 && !e.same_database {
        r.soft.push(format!(
            "{} source rows are outside the rule's where: they would stay on the primary",
            e.rows_outside
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> FlagOptions {
        FlagOptions {
            audit_log: "audit.jsonl".into(),
            max_lag_seconds: 5.0,
            max_lag_transactions: 1000,
            has_secondary: true,
            shadow_window_secs: 900,
            max_shadow_mismatch_rate: 0.0,
        }
    }

    fn ready() -> Evidence {
        Evidence {
            from: Direction::Primary,
            rule_checked: true,
            same_database: true,
            backfill: Some("done".into()),
            last_verify: Some((true, 60)),
            max_verify_age_secs: 86400,
            forward: Some(crate::reads::flags::gate::tests::healthy()),
            needs_repair: false,
            rows_outside: 0,
            two_phase: None,
            reverse_connected: true,
            mixed_transactions: 0,
        }
    }

    #[test]
    fn a_ready_table_may_switch_and_every_missing_piece_is_named() {
        assert!(refusals(Direction::Secondary, &ready(), &bounds()).is_empty());
        let e = Evidence {
            backfill: Some("running".into()),
            last_verify: Some((true, 100_000)),
            needs_repair: true,
            rows_outside: 3,
            same_database: true,
            ..ready()
        };
        let r = refusals(Direction::Secondary, &e, &bounds());
        assert_eq!(r.hard.len(), 1, "{r:?}");
        assert!(r.hard[0].contains("repair it first"));
        assert_eq!(r.soft.len(), 2, "{r:?}");
        assert!(r.soft.iter().any(|s| s.contains("100000s old")));
        let apart = Evidence {
            same_database: false,
            ..e
        };
        let r = refusals(Direction::Secondary, &apart, &bounds());
        assert_eq!(r.hard.len(), 1, "{r:?}");
        assert!(r.soft.iter().any(|s| s.contains("3 source rows")), "{r:?}");
    }

    #[test]
    fn mixed_transactions_across_two_servers_need_two_phase_commit() {
        let apart = |mixed, two_phase| Evidence {
            same_database: false,
            mixed_transactions: mixed,
            two_phase,
            ..ready()
        };
        let on = |e: &Evidence| refusals(Direction::Secondary, e, &bounds());
        // Another server: the extended protocol's refusal is named, overridable.
        let r = on(&apart(0, Some(false)));
        assert!(r.hard.is_empty() && r.soft.len() == 1, "{r:?}");
        assert!(r.soft[0].contains("extended protocol"), "{r:?}");
        assert_eq!(on(&apart(7, Some(true))).soft.len(), 1);
        let r = on(&apart(7, Some(false)));
        assert!(r.hard.is_empty(), "{r:?}");
        assert!(
            r.soft.len() == 2
                && r.soft[1].contains("7 transactions")
                && r.soft[1].contains("0A000"),
            "{r:?}"
        );
    }

    #[test]
    fn the_way_back_is_open_while_the_reverse_mirror_runs_and_complete_is_final() {
        let on = Evidence {
            from: Direction::Secondary,
            ..ready()
        };
        assert!(refusals(Direction::Primary, &on, &bounds()).is_empty());
        assert!(refusals(Direction::Complete, &on, &bounds()).is_empty());
        let down = Evidence {
            reverse_connected: false,
            ..on
        };
        assert_eq!(refusals(Direction::Primary, &down, &bounds()).soft.len(), 1);
        let done = Evidence {
            from: Direction::Complete,
            ..ready()
        };
        assert_eq!(refusals(Direction::Primary, &done, &bounds()).hard.len(), 1);
        assert_eq!(
            refusals(Direction::Complete, &ready(), &bounds())
                .hard
                .len(),
            1
        );
    }
}
