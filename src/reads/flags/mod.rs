//! Where reads of each migrated table are served.
//!
//! [`ReadFlags`] holds each source table's read source (`primary`, `shadow`, `secondary`). It
//! starts from the rules' `reads` and is changed at runtime by the admin API. Sessions read it
//! on every statement without locking: the flags are one immutable [`Flags`] snapshot behind an
//! `ArcSwap`, replaced whole on each change, so a change applies to the next statement of every
//! session. Changes go through one mutex, the safety gate and the audit log.
//!
//! The safety gate ([`gate`], docs/DESIGN.md, principle 10): a switch to `secondary` is refused
//! while the mirror lags (`[admin] gate_max_lag_seconds`, `gate_max_lag_transactions`), has
//! parked transactions, is halted or not connected, while the rule does not mirror the table,
//! or while divergences were recorded for the table since its last switch; `force` overrides
//! all but a missing secondary. A switch to `primary` is always allowed: the way back stays
//! open. Any switch (to `shadow` too) re-arms the divergence count, so the evidence for
//! `secondary` is the divergences recorded since then. Every switch made is first a line of
//! the audit log ([`audit`]).
//!
//! Rules hot reload ([`reload`]): a reload keeps the runtime flag of every table that still
//! exists; a new table starts at its rule's `reads`; a removed table's flag goes. When a rule
//! file's own `reads` value changed since the last load, the rule file wins (through the same
//! gate, not forced; a refused change is logged and the flag stays): the DBA's edit is a switch
//! too.
//!
//! [`super::route`] is the pure decision the session makes per statement, with these flags.

pub(crate) mod audit;
pub(crate) mod gate;
mod reload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::{ArcSwap, Guard};
use serde::Serialize;
use tracing::{error, info, warn};

use crate::divergence::record::rfc3339;
use crate::divergence::Recorder;
use crate::mirror::status::MirrorReport;
use crate::rules::{MirrorMode, ReadSource, RuleSet, TableName};

/// The read source of one table, and the evidence its gate counts from.
#[derive(Debug, Clone)]
pub struct TableFlag {
    pub source: ReadSource,
    /// The share of sessions (1 to 100) whose reads go to `source`; the others' stay on the
    /// primary. A session keeps its side for its whole life ([`Flags::source_for`]).
    pub percent: u8,
    /// The rule file's `reads` at the last load: a reload that changes it wins.
    rule_reads: ReadSource,
    /// Divergences recorded for the table when it was last switched.
    baseline: u64,
}

/// One immutable state of every table's read source.
#[derive(Debug)]
pub struct Flags {
    rules: Arc<RuleSet>,
    tables: HashMap<TableName, TableFlag>,
    /// Goes up on every change: a session may compare it to skip work.
    pub version: u64,
}

impl Flags {
    /// The read source of a migrated table; `None` when no rule migrates it.
    pub fn get(&self, table: &TableName) -> Option<ReadSource> {
        self.tables.get(table).map(|f| f.source)
    }

    /// The share of sessions whose reads of `table` go to its read source.
    pub fn percent(&self, table: &TableName) -> Option<u8> {
        self.tables.get(table).map(|f| f.percent)
    }

    /// Where the reads of `table` go for a session of `bucket` (0 to 99, drawn once per
    /// session): the table's read source for the first `percent` buckets, the primary for the
    /// rest. Raising the percent only adds buckets, so no session changes sides but to join.
    pub fn source_for(&self, table: &TableName, bucket: u8) -> Option<ReadSource> {
        let f = self.tables.get(table)?;
        Some(if bucket < f.percent {
            f.source
        } else {
            ReadSource::Primary
        })
    }

    /// The rules these flags follow.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Fixed flags without rules, for tests of the routing decision.
    #[cfg(test)]
    pub(crate) fn fixed(list: &[(&str, ReadSource)]) -> Flags {
        let tables = list
            .iter()
            .map(|(t, s)| {
                let flag = TableFlag {
                    source: *s,
                    percent: 100,
                    rule_reads: *s,
                    baseline: 0,
                };
                (TableName::parse(t).expect("a table name"), flag)
            })
            .collect();
        Flags {
            rules: Arc::new(RuleSet::default()),
            tables,
            version: 1,
        }
    }
}

/// Why a change of a read source was not made.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("no rule migrates a table named {0:?}")]
    UnknownTable(String),
    /// Refused by the safety gate; the message says why (every reason).
    #[error("refused: {0}")]
    Refused(String),
    #[error("percent must be from 1 to 100, not {0}")]
    Percent(u8),
    #[error("cannot write the audit log {path}: {source}")]
    Audit {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a read switch would do (`dry_run`): whether it would change anything, the gate's
/// reasons that would refuse it (empty: it would go ahead), and the state it proposes, with
/// `overridden` the reasons `force` would override.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Preview {
    pub dry_run: bool,
    pub would_change: bool,
    pub refused: Vec<String>,
    #[serde(flatten)]
    pub state: TableState,
}

/// A table's read source after a change, as the admin API answers it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct TableState {
    /// The source table.
    pub source: String,
    pub target: String,
    /// Where its reads are served now.
    pub reads: String,
    /// The share of sessions whose reads go there (the others' stay on the primary).
    pub percent: u8,
    pub previous: String,
    pub previous_percent: u8,
    /// False when the table already had this read source (nothing done, nothing audited).
    pub changed: bool,
    pub forced: bool,
    /// The gate's reasons that `force` overrode.
    pub overridden: Vec<String>,
    pub reason: String,
    pub who: String,
    pub ts: String,
    /// What the gate judged the switch on (a switch that raises the secondary's share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
}

impl TableState {
    /// A switch of `table` from `from` to `to`, proposed now; not made yet.
    fn proposed(
        table: &TableName,
        target: String,
        (from, to): ((ReadSource, u8), (ReadSource, u8)),
        reason: &str,
        who: &str,
    ) -> TableState {
        TableState {
            source: table.to_string(),
            target,
            reads: to.0.as_str().into(),
            percent: to.1,
            previous: from.0.as_str().into(),
            previous_percent: from.1,
            changed: false,
            forced: false,
            overridden: Vec::new(),
            reason: reason.to_string(),
            who: who.to_string(),
            ts: rfc3339(SystemTime::now()),
            evidence: None,
        }
    }
}

/// The gate's bounds and the audit log.
#[derive(Debug, Clone)]
pub struct FlagOptions {
    pub audit_log: PathBuf,
    pub max_lag_seconds: f64,
    pub max_lag_transactions: u64,
    /// A secondary is configured (without one, reads can only be served by the primary).
    pub has_secondary: bool,
    /// The shadow reads of the last this many seconds are the gate's evidence ...
    pub shadow_window_secs: u64,
    /// ... and a larger share of them mismatched refuses a switch to `secondary`.
    pub max_shadow_mismatch_rate: f64,
}

impl FlagOptions {
    pub fn from_config(config: &crate::config::Config) -> FlagOptions {
        FlagOptions {
            audit_log: config.admin.audit_log.clone(),
            max_lag_seconds: config.admin.gate_max_lag_seconds,
            max_lag_transactions: config.admin.gate_max_lag_transactions,
            has_secondary: config.secondary.is_some(),
            shadow_window_secs: config.admin.gate_shadow_window_secs,
            max_shadow_mismatch_rate: config.admin.gate_max_shadow_mismatch_rate,
        }
    }
}

/// The mirror's figures, asked at each gated switch.
pub type MirrorProbe = Arc<dyn Fn() -> MirrorReport + Send + Sync>;

/// The other live instances sharing the state and their mirrors' lag (src/state/mod.rs), asked
/// at each gated switch: a read switched to the secondary is served by every instance.
pub type PeersProbe = Arc<dyn Fn() -> Vec<(String, f64)> + Send + Sync>;

/// The live read flags of every migrated table.
pub struct ReadFlags {
    rules: Arc<ArcSwap<RuleSet>>,
    flags: ArcSwap<Flags>,
    /// Serializes changes and reloads; holds the audit log's path.
    change: Mutex<()>,
    opts: FlagOptions,
    recorder: Arc<Recorder>,
    mirror: Option<MirrorProbe>,
    peers: std::sync::OnceLock<PeersProbe>,
}

impl std::fmt::Debug for ReadFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFlags")
            .field("version", &self.flags.load().version)
            .finish()
    }
}

impl ReadFlags {
    /// Flags at each rule's `reads`, following the live rules in `rules`.
    pub fn new(
        rules: Arc<ArcSwap<RuleSet>>,
        opts: FlagOptions,
        recorder: Arc<Recorder>,
        mirror: Option<MirrorProbe>,
    ) -> ReadFlags {
        let current = rules.load_full();
        let tables = current
            .rules()
            .iter()
            .map(|r| {
                let flag = TableFlag {
                    source: r.reads,
                    percent: 100,
                    rule_reads: r.reads,
                    baseline: 0,
                };
                (r.source.clone(), flag)
            })
            .collect();
        let flags = Flags {
            rules: current,
            tables,
            version: 1,
        };
        ReadFlags {
            rules,
            flags: ArcSwap::from_pointee(flags),
            change: Mutex::new(()),
            opts,
            recorder,
            mirror,
            peers: std::sync::OnceLock::new(),
        }
    }

    /// Why this instance's own mirror is not ready for reads on the secondary (empty: it is),
    /// for another instance's agreed switch (src/state/agree_reads.rs).
    pub fn local_refusals(&self) -> Vec<String> {
        match self.mirror.as_ref().map(|probe| probe()) {
            None => vec!["the mirror is not running".into()],
            Some(report) => gate::mirror_refusals(&report, &self.opts),
        }
    }

    /// Where the gate learns the other instances' lag (set once, by the shared state).
    pub fn set_peers(&self, peers: PeersProbe) {
        let _ = self.peers.set(peers);
    }

    /// The flags now, for one statement. Lock-free unless the rules were just reloaded (then
    /// the flags are reconciled with them once). The guard costs no reference count.
    pub fn load(&self) -> Guard<Arc<Flags>> {
        let flags = self.flags.load();
        if Arc::ptr_eq(&flags.rules, &self.rules.load()) {
            return flags;
        }
        drop(flags);
        self.reconcile();
        self.flags.load()
    }

    /// Every table's read source, in rule order.
    pub fn list(&self) -> Vec<(TableName, ReadSource)> {
        let flags = self.load();
        flags
            .rules
            .rules()
            .iter()
            .filter_map(|r| flags.get(&r.source).map(|s| (r.source.clone(), s)))
            .collect()
    }

    /// The switch of `table` to `to` for `percent` of the sessions, proposed against the
    /// flags `current`: the table, its flag, its rule's mirror mode and the proposed state.
    fn propose(
        &self,
        current: &Flags,
        table: &str,
        (to, percent): (ReadSource, u8),
        reason: &str,
        who: &str,
    ) -> Result<(TableName, TableFlag, MirrorMode, TableState), FlagError> {
        let unknown = || FlagError::UnknownTable(table.to_string());
        let name = TableName::parse(table).ok_or_else(unknown)?;
        let flag = current.tables.get(&name).ok_or_else(unknown)?.clone();
        let rule = current.rules.get(&name).ok_or_else(unknown)?;
        if !(1..=100).contains(&percent) {
            return Err(FlagError::Percent(percent));
        }
        // The primary serves everyone: a share of it means nothing.
        let percent = if to == ReadSource::Primary {
            100
        } else {
            percent
        };
        let target = rule.target.to_string();
        let moves = ((flag.source, flag.percent), (to, percent));
        let state = TableState::proposed(&name, target, moves, reason, who);
        Ok((name, flag, rule.mirror, state))
    }

    /// Changes where reads of `table` are served, for `percent` of the sessions (1 to 100; the
    /// others' stay on the primary). Refused by the safety gate unless `force` (a switch to
    /// `primary` is never refused, nor a lower share). The change is logged and audited.
    pub fn set(
        &self,
        table: &str,
        to: ReadSource,
        percent: u8,
        reason: &str,
        who: &str,
        force: bool,
    ) -> Result<TableState, FlagError> {
        let _one_at_a_time = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.load_locked();
        let (name, flag, mirror, mut state) =
            self.propose(&current, table, (to, percent), reason, who)?;
        let percent = state.percent;
        if (flag.source, flag.percent) == (to, percent) {
            return Ok(state);
        }
        state.overridden = self.admit(&name, &flag, (to, percent), mirror, force, &mut state)?;
        state.changed = true;
        state.forced = force;
        if let Err(e) = audit::append(&self.opts.audit_log, &state) {
            // Without its audit line a switch does not happen, except the way back.
            if to != ReadSource::Primary {
                return Err(e);
            }
            error!(error = %e, "read switch to primary made without its audit line");
        }
        info!(table = %name, from = flag.source.as_str(), to = to.as_str(), percent, reason, who,
              forced = force, overridden = ?state.overridden, "reads switched");
        self.store_switch(&current, &name, &flag, (to, percent));
        Ok(state)
    }

    /// What [`ReadFlags::set`] would do, without doing it (`--dry-run`): nothing is stored or
    /// audited.
    pub fn preview(
        &self,
        table: &str,
        to: ReadSource,
        percent: u8,
        force: bool,
    ) -> Result<Preview, FlagError> {
        let current = self.load();
        let (name, flag, mirror, mut state) =
            self.propose(&current, table, (to, percent), "", "")?;
        let would_change = (flag.source, flag.percent) != (to, state.percent);
        let mut refused = Vec::new();
        if would_change {
            let gate = self.refusals(&name, &flag, (to, state.percent), mirror);
            let gate = gate.map(|(reasons, evidence)| {
                state.evidence = evidence;
                reasons
            });
            match gate {
                Ok(reasons) if force => {
                    state.forced = !reasons.is_empty();
                    state.overridden = reasons;
                }
                Ok(reasons) => refused = reasons,
                Err(FlagError::Refused(why)) => refused = vec![why],
                Err(e) => return Err(e),
            }
        }
        Ok(Preview {
            dry_run: true,
            would_change,
            refused,
            state,
        })
    }

    /// Makes `table`'s flag what another instance made it (src/state/mod.rs): no gate, no
    /// audit line (that instance's are the switch's). True when it changed anything.
    pub fn apply_shared(&self, table: &TableName, to: ReadSource, percent: u8) -> bool {
        let _one_at_a_time = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.load_locked();
        let Some(flag) = current.tables.get(table) else {
            return false;
        };
        if (flag.source, flag.percent) == (to, percent) {
            return false;
        }
        let flag = flag.clone();
        self.store_switch(&current, table, &flag, (to, percent));
        true
    }

    /// The gate's reasons against a switch of `name` to `to` (empty: none), or the refusal no
    /// `force` overrides: without a secondary, only `primary` can be chosen at all.
    fn refusals(
        &self,
        name: &TableName,
        flag: &TableFlag,
        (to, percent): (ReadSource, u8),
        mirror: MirrorMode,
    ) -> Result<(Vec<String>, Option<serde_json::Value>), FlagError> {
        if to != ReadSource::Primary && !self.opts.has_secondary {
            return Err(FlagError::Refused(
                "no [secondary] is configured: reads can only be served by the primary".into(),
            ));
        }
        // More of the reads on the secondary is a switch to it; fewer is a way back.
        let more = to == ReadSource::Secondary
            && (flag.source != ReadSource::Secondary || percent > flag.percent);
        Ok(match more {
            true => {
                let (why, evidence) = self.gate(name, flag, to, mirror);
                (why, Some(evidence))
            }
            false => (Vec::new(), None),
        })
    }

    /// Whether the switch `state` proposes may be made: the gate's reasons that `force`
    /// overrides, or the refusal.
    fn admit(
        &self,
        name: &TableName,
        flag: &TableFlag,
        (to, percent): (ReadSource, u8),
        mirror: MirrorMode,
        force: bool,
        state: &mut TableState,
    ) -> Result<Vec<String>, FlagError> {
        let (refusals, evidence) = self.refusals(name, flag, (to, percent), mirror)?;
        state.evidence = evidence;
        if !refusals.is_empty() && !force {
            let (reason, who) = (state.reason.as_str(), state.who.as_str());
            warn!(table = %name, from = flag.source.as_str(), to = to.as_str(), reason,
                  who, refused = %refusals.join("; "), "read switch refused");
            return Err(FlagError::Refused(refusals.join("; ")));
        }
        Ok(refusals)
    }

    /// Makes the switch of `name` to `to`: new flags, the table's divergence count re-armed.
    fn store_switch(
        &self,
        current: &Flags,
        name: &TableName,
        flag: &TableFlag,
        (to, percent): (ReadSource, u8),
    ) {
        let mut tables = current.tables.clone();
        tables.insert(
            name.clone(),
            TableFlag {
                source: to,
                percent,
                rule_reads: flag.rule_reads,
                baseline: self.recorder.count_table(&name.to_string()),
            },
        );
        self.flags.store(Arc::new(Flags {
            rules: current.rules.clone(),
            tables,
            version: current.version + 1,
        }));
    }

    /// Why a switch to `to` must be refused ([`gate::refusals`]; empty when it may go ahead),
    /// and the evidence it was judged on, as the audit line records it.
    fn gate(
        &self,
        table: &TableName,
        flag: &TableFlag,
        to: ReadSource,
        mirror_mode: MirrorMode,
    ) -> (Vec<String>, serde_json::Value) {
        let report = self.mirror.as_ref().map(|probe| probe());
        let seen = self.recorder.count_table(&table.to_string());
        let peers = self.peers.get().map(|p| p()).unwrap_or_default();
        let evidence = gate::Evidence {
            mirror_mode,
            mirror: report.as_ref(),
            peers: &peers,
            divergences: seen.saturating_sub(flag.baseline),
            shadow: crate::reads::shadow::window::over(
                &table.to_string(),
                self.opts.shadow_window_secs,
            ),
        };
        let why = gate::refusals(table, to, &evidence, &self.opts);
        let mirror = report.as_ref().map(MirrorReport::gate_evidence);
        let instances: Vec<_> = peers
            .iter()
            .map(|(name, lag)| serde_json::json!({"name": name, "lag_seconds": lag}))
            .collect();
        let shown = serde_json::json!({
            "mirror": mirror,
            "instances": instances,
            "divergences_since_switch": evidence.divergences,
            "shadow": {
                "window_secs": self.opts.shadow_window_secs,
                "compared": evidence.shadow.0,
                "mismatched": evidence.shadow.1,
            },
        });
        (why, shown)
    }
}

#[cfg(test)]
mod tests {
    use super::gate::tests::healthy;
    use super::*;

    struct Setup {
        rules: Arc<ArcSwap<RuleSet>>,
        flags: ReadFlags,
        recorder: Arc<Recorder>,
        report: Arc<Mutex<MirrorReport>>,
        dir: tempfile::TempDir,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let rule = crate::sql::view::tests::dxy_rule();
        let rules = Arc::new(ArcSwap::from_pointee(RuleSet::new(vec![rule])));
        let recorder = Arc::new(Recorder::open_path(&dir.path().join("d.jsonl"), true).unwrap());
        let report = Arc::new(Mutex::new(healthy()));
        let probe = report.clone();
        let flags = ReadFlags::new(
            rules.clone(),
            FlagOptions {
                audit_log: dir.path().join("audit/audit.jsonl"),
                max_lag_seconds: 5.0,
                max_lag_transactions: 10,
                has_secondary: true,
                shadow_window_secs: 900,
                max_shadow_mismatch_rate: 0.0,
            },
            recorder.clone(),
            Some(Arc::new(move || probe.lock().unwrap().clone())),
        );
        Setup {
            rules,
            flags,
            recorder,
            report,
            dir,
        }
    }

    fn audit_lines(s: &Setup) -> Vec<serde_json::Value> {
        std::fs::read_to_string(s.dir.path().join("audit/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn the_gate_refuses_a_lagging_mirror_unless_forced_and_primary_is_always_allowed() {
        use ReadSource::*;
        let s = setup();
        let t = TableName::parse("derived_data_bars").unwrap();
        assert_eq!(s.flags.load().get(&t), Some(Primary));
        s.report.lock().unwrap().lag_seconds = 9.0;
        s.report.lock().unwrap().parked = 2;
        let e = s
            .flags
            .set("derived_data_bars", Secondary, 100, "go", "op", false)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("lags 9.0s") && msg.contains("2 parked"),
            "{msg}"
        );
        assert_eq!(s.flags.load().get(&t), Some(Primary));
        // Shadow is not gated; forced secondary is, but goes through and says what it overrode.
        s.flags
            .set("derived_data_bars", Shadow, 100, "compare", "op", false)
            .unwrap();
        let st = s
            .flags
            .set("Derived_Data_Bars", Secondary, 100, "go", "op", true)
            .unwrap();
        assert!(
            st.changed && st.forced && st.overridden.len() == 2,
            "{st:?}"
        );
        assert_eq!(s.flags.load().get(&t), Some(Secondary));
        // Rollback is never refused.
        s.flags
            .set("derived_data_bars", Primary, 100, "back", "op", false)
            .unwrap();
        let lines = audit_lines(&s);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1]["from"], "shadow");
        assert_eq!(lines[1]["to"], "secondary");
        assert_eq!(lines[1]["forced"], true);
        assert_eq!(lines[1]["reason"], "go");
        assert_eq!(lines[2]["to"], "primary");
        assert!(matches!(
            s.flags.set("nope", Primary, 100, "", "", false),
            Err(FlagError::UnknownTable(_))
        ));
        // Setting the same source again changes and audits nothing.
        let st = s
            .flags
            .set("derived_data_bars", Primary, 100, "again", "op", false)
            .unwrap();
        assert!(!st.changed);
        assert_eq!(audit_lines(&s).len(), 3);
    }

    #[test]
    fn a_share_of_the_sessions_is_served_by_the_secondary_and_raising_it_only_adds_sessions() {
        use ReadSource::*;
        let s = setup();
        let t = TableName::parse("derived_data_bars").unwrap();
        let st = s
            .flags
            .set("derived_data_bars", Secondary, 25, "ramp", "op", false)
            .unwrap();
        assert_eq!((st.percent, st.previous_percent), (25, 100));
        let sides = |f: &Flags| -> Vec<ReadSource> {
            (0..100).map(|b| f.source_for(&t, b).unwrap()).collect()
        };
        let quarter = sides(&s.flags.load());
        assert_eq!(quarter.iter().filter(|&&x| x == Secondary).count(), 25);
        // Raising the share is gated like a switch: a lagging mirror refuses it.
        s.report.lock().unwrap().parked = 1;
        let e = s
            .flags
            .set("derived_data_bars", Secondary, 50, "ramp", "op", false);
        assert!(matches!(e, Err(FlagError::Refused(_))), "{e:?}");
        // Lowering it is a way back: never refused.
        s.flags
            .set("derived_data_bars", Secondary, 10, "back", "op", false)
            .unwrap();
        s.report.lock().unwrap().parked = 0;
        s.flags
            .set("derived_data_bars", Secondary, 50, "ramp", "op", false)
            .unwrap();
        let half = sides(&s.flags.load());
        for (b, side) in quarter.iter().enumerate() {
            if *side == Secondary {
                assert_eq!(half[b], Secondary, "bucket {b} left the secondary");
            }
        }
        assert_eq!(half.iter().filter(|&&x| x == Secondary).count(), 50);
        for bad in [0, 101] {
            let e = s
                .flags
                .set("derived_data_bars", Secondary, bad, "", "op", false);
            assert!(matches!(e, Err(FlagError::Percent(_))), "{e:?}");
        }
        let lines = audit_lines(&s);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            (
                lines[0]["percent"].as_u64(),
                lines[0]["from_percent"].as_u64()
            ),
            (Some(25), Some(100))
        );
        assert_eq!(lines[2]["percent"], 50);
        // The primary serves everyone.
        let st = s
            .flags
            .set("derived_data_bars", Primary, 30, "", "op", false)
            .unwrap();
        assert_eq!(st.percent, 100);
        assert!(sides(&s.flags.load()).iter().all(|&x| x == Primary));
    }

    #[test]
    fn divergences_since_the_last_switch_refuse_secondary() {
        use ReadSource::*;
        let s = setup();
        s.flags
            .set("derived_data_bars", Shadow, 100, "", "op", false)
            .unwrap();
        s.recorder.record(crate::divergence::Divergence::new(
            crate::divergence::Kind::ReadMismatch,
            "derived_data_bars",
        ));
        let e = s
            .flags
            .set("derived_data_bars", Secondary, 100, "", "op", false)
            .unwrap_err();
        assert!(e.to_string().contains("1 divergences"), "{e}");
        // Re-arming: a switch (back to shadow after fixing) starts the count again.
        s.flags
            .set("derived_data_bars", Primary, 100, "fixing", "op", false)
            .unwrap();
        s.flags
            .set("derived_data_bars", Shadow, 100, "fixed", "op", false)
            .unwrap();
        s.flags
            .set("derived_data_bars", Secondary, 100, "clean", "op", false)
            .unwrap();
    }

    #[test]
    fn a_reload_keeps_runtime_flags_unless_the_rule_file_changed_them() {
        use ReadSource::*;
        let s = setup();
        let t = TableName::parse("derived_data_bars").unwrap();
        s.flags
            .set("derived_data_bars", Shadow, 100, "", "op", false)
            .unwrap();
        let v = s.flags.load().version;
        // The same rules, reloaded: the runtime flag stays.
        s.rules.store(Arc::new(RuleSet::new(vec![
            crate::sql::view::tests::dxy_rule(),
        ])));
        assert_eq!(s.flags.load().get(&t), Some(Shadow));
        assert!(s.flags.load().version > v);
        // The rule file says secondary now: it wins (the gate passes).
        let mut rule = crate::sql::view::tests::dxy_rule();
        rule.reads = Secondary;
        s.rules.store(Arc::new(RuleSet::new(vec![rule.clone()])));
        assert_eq!(s.flags.load().get(&t), Some(Secondary));
        assert_eq!(audit_lines(&s).last().unwrap()["who"], "rules");
        // A runtime switch back, then the same rule file again: the runtime flag stays.
        s.flags
            .set("derived_data_bars", Primary, 100, "", "op", false)
            .unwrap();
        s.rules.store(Arc::new(RuleSet::new(vec![rule])));
        assert_eq!(s.flags.load().get(&t), Some(Primary));
        // A table that goes away loses its flag.
        s.rules.store(Arc::new(RuleSet::default()));
        assert_eq!(s.flags.load().get(&t), None);
        assert!(s.flags.list().is_empty());
    }
}
