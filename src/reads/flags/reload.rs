//! The flags follow a rules reload: the first statement (or change) that sees new rules
//! reconciles the flags with them once, under the change mutex. A table that stays keeps its
//! runtime flag, a new one starts at its rule's `reads`, a removed one loses its flag; a rule
//! file whose own `reads` changed is the DBA's switch, gated and audited like any other.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{error, info};

use super::{audit, Flags, ReadFlags, TableFlag, TableState};
use crate::rules::{MirrorMode, ReadSource, TableName};

impl ReadFlags {
    /// The flags, reconciled with the live rules; the caller holds `change`.
    pub(super) fn load_locked(&self) -> Arc<Flags> {
        let flags = self.flags.load_full();
        if Arc::ptr_eq(&flags.rules, &self.rules.load()) {
            return flags;
        }
        self.reconcile_locked(flags)
    }

    /// Reconciles the flags with reloaded rules, unless a change did it meanwhile.
    pub(super) fn reconcile(&self) {
        let _one_at_a_time = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let flags = self.flags.load_full();
        if !Arc::ptr_eq(&flags.rules, &self.rules.load()) {
            self.reconcile_locked(flags);
        }
    }

    /// Follows a rules reload (see the module docs).
    fn reconcile_locked(&self, old: Arc<Flags>) -> Arc<Flags> {
        let rules = self.rules.load_full();
        let mut tables = HashMap::new();
        for rule in rules.rules() {
            let name = &rule.source;
            let flag = match old.tables.get(name) {
                None => {
                    info!(table = %name, reads = rule.reads.as_str(), "new migrated table");
                    TableFlag {
                        source: rule.reads,
                        percent: 100,
                        rule_reads: rule.reads,
                        baseline: self.recorder.count_table(&name.to_string()),
                    }
                }
                Some(f) if f.rule_reads == rule.reads || f.source == rule.reads => TableFlag {
                    rule_reads: rule.reads,
                    ..f.clone()
                },
                Some(f) => self.rule_switch(name, f, rule.reads, rule.mirror),
            };
            tables.insert(name.clone(), flag);
        }
        for name in old.tables.keys().filter(|n| !tables.contains_key(*n)) {
            info!(table = %name, "table no longer migrated: its read flag is dropped");
        }
        let new = Arc::new(Flags {
            rules,
            tables,
            version: old.version + 1,
        });
        self.flags.store(new.clone());
        new
    }

    /// A rule file's `reads` that changed: the DBA's switch, gated and audited like any other.
    fn rule_switch(
        &self,
        name: &TableName,
        f: &TableFlag,
        to: ReadSource,
        mirror: MirrorMode,
    ) -> TableFlag {
        let keep = TableFlag {
            rule_reads: to,
            ..f.clone()
        };
        let (mut refusals, _) = self.gate(name, f, to, mirror);
        if to != ReadSource::Primary && !self.opts.has_secondary {
            refusals.push("no [secondary] is configured".into());
        }
        if !refusals.is_empty() {
            error!(table = %name, from = f.source.as_str(), to = to.as_str(),
                   refused = %refusals.join("; "),
                   "the rule file's new `reads` is refused by the safety gate; the flag stays");
            return keep;
        }
        let reason = "the rule file's `reads` changed";
        let mut state = TableState::proposed(
            name,
            String::new(),
            ((f.source, f.percent), (to, 100)),
            reason,
            "rules",
        );
        state.changed = true;
        if let Err(e) = audit::append(&self.opts.audit_log, &state) {
            if to != ReadSource::Primary {
                error!(table = %name, error = %e, "the rule file's new `reads` is not applied");
                return keep;
            }
        }
        info!(table = %name, from = f.source.as_str(), to = to.as_str(), who = "rules",
              "reads switched by the rule file");
        TableFlag {
            source: to,
            percent: 100,
            rule_reads: to,
            baseline: self.recorder.count_table(&name.to_string()),
        }
    }
}
