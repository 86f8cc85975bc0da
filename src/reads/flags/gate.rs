//! The safety gate (docs/DESIGN.md, principle 10): the reasons a switch of a table's reads to
//! `secondary` must be refused. Pure: the flags gather the evidence (the mirror's figures, the
//! divergences recorded since the table's last switch) and decide whether `force` overrides.

use crate::mirror::status::MirrorReport;
use crate::rules::{MirrorMode, ReadSource, TableName};

use super::FlagOptions;

/// What a switch to `secondary` is judged on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Evidence<'a> {
    /// The rule's `mirror`: without mirrored writes the secondary falls behind at once.
    pub mirror_mode: MirrorMode,
    /// The mirror's figures now; `None` when no mirror runs.
    pub mirror: Option<&'a MirrorReport>,
    /// The other live instances and their mirrors' lag in seconds (from their heartbeats).
    pub peers: &'a [(String, f64)],
    /// Divergences recorded for the table since its last switch.
    pub divergences: u64,
    /// Its shadow reads compared in the last `shadow_window_secs`, and how many differed.
    pub shadow: (u64, u64),
}

/// Why a switch of `table` to `to` must be refused, every reason; empty when it may go ahead.
/// Only a switch to `secondary` is gated: the way back, and shadowing, are always open.
pub(super) fn refusals(
    table: &TableName,
    to: ReadSource,
    evidence: &Evidence,
    bounds: &FlagOptions,
) -> Vec<String> {
    let mut why = Vec::new();
    if to != ReadSource::Secondary {
        return why;
    }
    if evidence.mirror_mode == MirrorMode::Off {
        why.push("the rule does not mirror writes (mirror = \"off\")".into());
    }
    match evidence.mirror {
        None => why.push("the mirror is not running".into()),
        Some(m) => why.extend(mirror_refusals(m, bounds)),
    }
    for (name, lag) in evidence.peers {
        if *lag > bounds.max_lag_seconds {
            why.push(format!(
                "the mirror of instance {name} lags {lag:.1}s (gate_max_lag_seconds = {})",
                bounds.max_lag_seconds
            ));
        }
    }
    if evidence.divergences > 0 {
        why.push(format!(
            "{} divergences recorded for {table} since its last switch",
            evidence.divergences
        ));
    }
    let (compared, mismatched) = evidence.shadow;
    if mismatched > 0 && mismatched as f64 > bounds.max_shadow_mismatch_rate * compared as f64 {
        why.push(format!(
            "{mismatched} of {compared} shadow reads of {table} differed in the last {} s \
             ({:.2}%; gate_max_shadow_mismatch_rate = {})",
            bounds.shadow_window_secs,
            100.0 * mismatched as f64 / compared as f64,
            bounds.max_shadow_mismatch_rate
        ));
    }
    why
}

/// What in the mirror's figures refuses a switch: lag over the bounds, parked transactions, an
/// applier halted or not connected.
pub(crate) fn mirror_refusals(m: &MirrorReport, bounds: &FlagOptions) -> Vec<String> {
    let mut why = Vec::new();
    if m.lag_seconds > bounds.max_lag_seconds {
        why.push(format!(
            "the mirror lags {:.1}s (gate_max_lag_seconds = {})",
            m.lag_seconds, bounds.max_lag_seconds
        ));
    }
    if m.lag_transactions > bounds.max_lag_transactions {
        why.push(format!(
            "{} transactions wait to be applied (gate_max_lag_transactions = {})",
            m.lag_transactions, bounds.max_lag_transactions
        ));
    }
    if m.parked > 0 {
        why.push(format!("{} parked transactions", m.parked));
    }
    if m.halted {
        why.push("the mirror applier is halted".into());
    }
    if !m.connected {
        why.push("the mirror applier is not connected to the secondary".into());
    }
    why
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn healthy() -> MirrorReport {
        MirrorReport {
            journal_seq: 5,
            applied_seq: 5,
            lag_seconds: 0.0,
            lag_transactions: 0,
            parked: 0,
            applied_per_second: 0.0,
            retries: 0,
            in_doubt: 0,
            in_progress: 0,
            journal_bytes: 0,
            journal_segments: 1,
            journal_full: false,
            disk_full: false,
            halted: false,
            connected: true,
            fsyncs: 0,
            appends: 0,
            last_error: None,
        }
    }

    fn bounds() -> FlagOptions {
        FlagOptions {
            audit_log: "audit.jsonl".into(),
            max_lag_seconds: 5.0,
            max_lag_transactions: 10,
            has_secondary: true,
            shadow_window_secs: 900,
            max_shadow_mismatch_rate: 0.01,
        }
    }

    fn judge(to: ReadSource, evidence: Evidence) -> Vec<String> {
        let t = TableName::parse("bars").unwrap();
        refusals(&t, to, &evidence, &bounds())
    }

    #[test]
    fn a_healthy_mirror_without_divergences_lets_the_switch_go_ahead() {
        let m = healthy();
        let evidence = Evidence {
            mirror_mode: MirrorMode::Rows,
            mirror: Some(&m),
            peers: &[],
            divergences: 0,
            shadow: (0, 0),
        };
        assert!(judge(ReadSource::Secondary, evidence).is_empty());
    }

    #[test]
    fn every_reason_is_given() {
        let mut m = healthy();
        m.lag_seconds = 9.0;
        m.lag_transactions = 11;
        m.parked = 2;
        m.halted = true;
        m.connected = false;
        let evidence = Evidence {
            mirror_mode: MirrorMode::Off,
            mirror: Some(&m),
            peers: &[],
            divergences: 3,
            shadow: (200, 3),
        };
        assert_eq!(
            judge(ReadSource::Secondary, evidence),
            vec![
                "the rule does not mirror writes (mirror = \"off\")",
                "the mirror lags 9.0s (gate_max_lag_seconds = 5)",
                "11 transactions wait to be applied (gate_max_lag_transactions = 10)",
                "2 parked transactions",
                "the mirror applier is halted",
                "the mirror applier is not connected to the secondary",
                "3 divergences recorded for bars since its last switch",
                "3 of 200 shadow reads of bars differed in the last 900 s (1.50%; \
                 gate_max_shadow_mismatch_rate = 0.01)",
            ]
        );
        // Lag at the bounds is not over them.
        let mut m = healthy();
        (m.lag_seconds, m.lag_transactions) = (5.0, 10);
        let at_bounds = Evidence {
            mirror_mode: MirrorMode::Rows,
            mirror: Some(&m),
            peers: &[],
            divergences: 0,
            shadow: (0, 0),
        };
        assert!(judge(ReadSource::Secondary, at_bounds).is_empty());
    }

    #[test]
    fn another_instance_whose_mirror_lags_refuses_the_switch() {
        let m = healthy();
        let peers = [("b".to_string(), 9.0), ("c".to_string(), 0.2)];
        let evidence = Evidence {
            mirror_mode: MirrorMode::Rows,
            mirror: Some(&m),
            peers: &peers,
            divergences: 0,
            shadow: (10, 0),
        };
        assert_eq!(
            judge(ReadSource::Secondary, evidence),
            vec!["the mirror of instance b lags 9.0s (gate_max_lag_seconds = 5)"]
        );
    }

    #[test]
    fn only_a_switch_to_the_secondary_is_gated() {
        let without_mirror = Evidence {
            mirror_mode: MirrorMode::Off,
            mirror: None,
            peers: &[],
            divergences: 1,
            shadow: (0, 0),
        };
        assert_eq!(
            judge(ReadSource::Secondary, without_mirror)
                .first()
                .unwrap(),
            "the rule does not mirror writes (mirror = \"off\")"
        );
        assert!(judge(ReadSource::Secondary, without_mirror)
            .contains(&"the mirror is not running".to_string()));
        assert!(judge(ReadSource::Shadow, without_mirror).is_empty());
        assert!(judge(ReadSource::Primary, without_mirror).is_empty());
    }
}
