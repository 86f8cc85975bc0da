//! The write switch's machinery in a running proxy: each table's write direction (kept beside
//! the journal, `writes.json`), the reverse mirror's applier, and, for the tables whose writes
//! were on the secondary when pgbridge stopped, their write views and reverse capture set up
//! again (src/writes/mod.rs).

use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::config::Config;
use crate::mirror::reverse::{self, ReverseApplier, ReverseConfig, ReverseHandle};
use crate::rules::RuleSet;
use crate::writes::{install, WriteFlags};

/// The write directions and the reverse applier (with a secondary).
pub struct Writes {
    pub flags: Arc<WriteFlags>,
    pub reverse: Option<ReverseHandle>,
}

impl Writes {
    /// Sets the gauges of the write switch for `/metrics`: each table's direction (1 on the
    /// secondary), and the reverse mirror's queue and lag.
    pub fn sample_metrics(&self, rules: &RuleSet) {
        let directions = self.flags.load();
        for rule in rules.rules() {
            let on = directions.get(&rule.source).on_secondary();
            metrics::gauge!("pgbridge_table_writes_on_secondary", "table" => rule.source.to_string())
                .set(if on { 1.0 } else { 0.0 });
        }
        if let Some(r) = &self.reverse {
            let report = r.stats().report();
            metrics::gauge!("pgbridge_reverse_queued").set(report.queued as f64);
            metrics::gauge!("pgbridge_reverse_lag_seconds").set(report.lag_seconds);
        }
    }
}

/// Opens the directions and starts the reverse applier.
pub fn start(
    config: &Config,
    rules: &Arc<ArcSwap<RuleSet>>,
) -> Result<Writes, crate::writes::persist::PersistError> {
    let path = config.mirror.journal_dir.join("writes.json");
    let flags = WriteFlags::open(Some(path))?;
    let reverse = config.secondary.as_ref().map(|s| {
        let cfg = ReverseConfig::new(config.primary.url.clone(), s.url.clone());
        ReverseApplier::spawn(cfg, rules.clone())
    });
    if let Some(s) = &config.secondary {
        tokio::spawn(restore(flags.clone(), rules.clone(), s.url.clone()));
        tokio::spawn(settle(
            flags.clone(),
            config.primary.url.clone(),
            s.url.clone(),
        ));
    }
    Ok(Writes { flags, reverse })
}

/// While the targets are on another server: every few seconds, the prepared parts of
/// transactions that their sessions left unsettled are settled by the primary's outcome
/// (src/writes/twophase.rs).
async fn settle(
    flags: Arc<WriteFlags>,
    primary: crate::config::PgUrl,
    secondary: crate::config::PgUrl,
) {
    let every = std::time::Duration::from_secs(2);
    loop {
        tokio::time::sleep(every).await;
        if !flags.load().remote {
            continue;
        }
        let settled = async {
            let p = install::connect(&primary).await?;
            let s = install::connect(&secondary).await?;
            Ok::<_, tokio_postgres::Error>((p, s))
        }
        .await;
        let (p, s) = match settled {
            Ok(clients) => clients,
            Err(e) => {
                warn!(error = %crate::net::error_text(&e), "cannot settle prepared transactions yet");
                continue;
            }
        };
        loop {
            if let Err(e) = crate::writes::twophase::settle_orphans(&p, &s).await {
                warn!(error = %e, "cannot settle prepared transactions yet");
                break;
            }
            tokio::time::sleep(every).await;
            if p.is_closed() || s.is_closed() {
                break;
            }
        }
    }
}

/// Sets up the write views and reverse capture of the tables switched before a restart
/// (idempotent; retried until it succeeds), and again whenever the rules change (a reload), so
/// that the views and the capture follow the rule the sessions and the reverse mirror use.
async fn restore(
    flags: Arc<WriteFlags>,
    rules: Arc<ArcSwap<RuleSet>>,
    secondary: crate::config::PgUrl,
) {
    let mut done: Option<Arc<RuleSet>> = None;
    let mut wait = std::time::Duration::from_millis(200);
    loop {
        let current = rules.load_full();
        let due = done.as_ref().is_none_or(|d| !Arc::ptr_eq(d, &current));
        // Not while a switch runs: it installs and starts or stops the capture itself.
        let one = match due {
            true => Some(flags.switching.lock().await),
            false => None,
        };
        let directions = flags.load();
        if due && !directions.switched.is_empty() {
            let restored = restore_once(&directions, &current, &secondary).await;
            drop(one);
            match restored {
                Ok(()) => {
                    info!(
                        tables = directions.switched.len(),
                        "write views of switched tables ready"
                    );
                    done = Some(current);
                    wait = std::time::Duration::from_millis(200);
                }
                Err(e) => {
                    warn!(error = %e, "cannot set up the write views of switched tables yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                    continue;
                }
            }
        } else if due {
            drop(one);
            done = Some(current);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn restore_once(
    directions: &crate::writes::Directions,
    rules: &RuleSet,
    secondary: &crate::config::PgUrl,
) -> Result<(), install::InstallError> {
    let client = install::connect(secondary).await?;
    for (table, direction) in &directions.tables {
        let Some(rule) = rules.get(table) else {
            continue;
        };
        install::install(&client, rule).await?;
        if *direction == crate::writes::Direction::Secondary {
            reverse::enable(&client, rule).await?;
        }
    }
    Ok(())
}
