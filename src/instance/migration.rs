//! What `serve` adds to the relay when rules are configured: the live rules (hot reloaded), the
//! SQL analyzer sessions consult, the divergence recorder, and, with a secondary, the journal and
//! its applier.
//!
//! Startup order matters: the journal's in-doubt transactions are resolved against the primary
//! before the applier starts, so that the applier never waits on an intent whose session died
//! with the previous process.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{Config, MirrorMode};
use crate::divergence::Recorder;
use crate::mirror::apply::ApplierConfig;
use crate::mirror::resolve::{resolve_at_startup, spawn_resolver, ResolveConfig};
use crate::mirror::{Applier, ApplierHandle, Journal, JournalOptions};
use crate::reads::secondary::ServeOptions;
use crate::reads::shadow::{Shadow, ShadowOptions};
use crate::reads::{FlagOptions, MirrorProbe, ReadFlags, SharedTables};
use crate::rules::reload::Loader;
use crate::rules::{RuleSet, RulesError};
use crate::sql::Analyzer;

/// Why the migration machinery could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error("cannot open the divergence log {}: {source}", path.display())]
    DivergenceLog {
        path: std::path::PathBuf,
        source: crate::divergence::DivergenceError,
    },
    #[error("cannot open the journal in {}: {source}", dir.display())]
    Journal {
        dir: std::path::PathBuf,
        source: crate::mirror::JournalError,
    },
    #[error("cannot ask the primary the outcome of in-doubt transactions: {}", crate::net::error_text(.0))]
    Resolve(tokio_postgres::Error),
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error(transparent)]
    Writes(#[from] crate::writes::persist::PersistError),
}

impl StartError {
    /// Something needed could not be reached (as opposed to a wrong config or rule).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StartError::Rules(RulesError::Unreachable { .. }) | StartError::Resolve(_)
        )
    }
}

/// Statement texts whose analyses are kept.
const ANALYSIS_CACHE: usize = 10_000;

/// The journal and applier of committed writes.
pub struct Mirror {
    pub journal: Arc<Journal>,
    pub applier: ApplierHandle,
    pub mode: MirrorMode,
    pub sync_timeout: Duration,
}

/// The migration machinery of a running proxy.
pub struct Migration {
    pub rules: Arc<ArcSwap<RuleSet>>,
    pub analyzer: Arc<Analyzer>,
    pub recorder: Arc<Recorder>,
    pub mirror: Option<Mirror>,
    /// Each migrated table's read source, changed by the admin API.
    pub reads: Arc<ReadFlags>,
    /// `[secondary] shared_tables`, for [`crate::reads::route`].
    pub shared: SharedTables,
    /// Shadow reads; `None` without a secondary.
    pub shadow: Option<Arc<Shadow>>,
    /// How sessions serve reads from the secondary; `None` without a secondary.
    pub serve: Option<Arc<ServeOptions>>,
    /// Backfill jobs; `None` without a secondary.
    pub jobs: Option<Arc<crate::migrate::Jobs>>,
    /// Each table's write direction and the reverse mirror (src/writes/mod.rs).
    pub writes: super::writes::Writes,
    /// The state shared with the other instances (src/state/mod.rs); `None` without a
    /// `[state]` or `[secondary]` url.
    pub state: Option<Arc<crate::state::SharedState>>,
    _reload: JoinHandle<()>,
    _resolver: Option<JoinHandle<()>>,
}

impl Migration {
    /// Loads the rules and starts mirroring; `None` when the config has no rules (the default
    /// `rules` directory absent): pgbridge is then a plain relay.
    pub async fn start(config: &Config) -> Result<Option<Migration>, StartError> {
        if !config.rules_given && !config.rules.exists() {
            info!(path = %config.rules.display(), "no rules: relaying only");
            return Ok(None);
        }
        let loader = Loader::from_config(config);
        let (rules, reload) = crate::rules::reload::start(loader).await?;
        let recorder = Arc::new(Recorder::open(&config.divergence).map_err(|source| {
            StartError::DivergenceLog {
                path: config.divergence.log.clone(),
                source,
            }
        })?);
        let analyzer = Arc::new(Analyzer::new(rules.clone(), ANALYSIS_CACHE));
        let (mirror, resolver) = match &config.secondary {
            Some(secondary) => {
                let (m, r) = start_mirror(config, secondary, &rules, &recorder).await?;
                (Some(m), Some(r))
            }
            None => {
                warn_unmirrored(&rules.load());
                (None, None)
            }
        };
        let reads = read_flags(config, &rules, &recorder, mirror.as_ref());
        let (shadow, serve) = config
            .secondary
            .as_ref()
            .map(|s| secondary_reads(config, s, &rules, &recorder, mirror.as_ref()))
            .unzip();
        let writes = super::writes::start(config, &rules)?;
        let state = config
            .state_url()
            .map(|url| shared_state(config, url, &reads, &writes, mirror.as_ref()));
        let jobs = start_jobs(config, mirror.as_ref(), &rules, &recorder, &writes.flags);
        Ok(Some(Migration {
            state,
            writes,
            serve,
            jobs,
            rules,
            analyzer,
            recorder,
            mirror,
            reads,
            shared: SharedTables::from_config(config),
            shadow,
            _reload: reload,
            _resolver: resolver,
        }))
    }
}

/// The backfill, verify and repair jobs, when there is a secondary and a mirror to order them
/// with.
fn start_jobs(
    config: &Config,
    mirror: Option<&Mirror>,
    rules: &Arc<ArcSwap<RuleSet>>,
    recorder: &Arc<Recorder>,
    writes: &Arc<crate::writes::WriteFlags>,
) -> Option<Arc<crate::migrate::Jobs>> {
    let (s, m) = config.secondary.as_ref().zip(mirror)?;
    let port = m.applier.chunk_port();
    let jobs = crate::migrate::Jobs::start(
        config,
        s.url.clone(),
        rules.clone(),
        port,
        recorder.clone(),
        writes.clone(),
    );
    Some(jobs)
}

/// Without a secondary, the rules that mirror writes mirror nothing: say so once.
fn warn_unmirrored(rules: &RuleSet) {
    if rules
        .rules()
        .iter()
        .any(|r| r.mirror != crate::rules::MirrorMode::Off)
    {
        warn!("no [secondary]: writes to migrated tables are not mirrored");
    }
}

/// The state shared with the other instances; the writes of every migrated table held until
/// the shared write directions were read (src/state/writes.rs).
fn shared_state(
    config: &Config,
    url: &crate::config::PgUrl,
    reads: &Arc<ReadFlags>,
    writes: &super::writes::Writes,
    mirror: Option<&Mirror>,
) -> Arc<crate::state::SharedState> {
    let forward = mirror.map(|m| {
        let (journal, stats) = (m.journal.clone(), m.applier.stats().clone());
        Arc::new(move || {
            let r = stats.report(&journal);
            (r.journal_seq, r.applied_seq)
        }) as crate::state::writes::ForwardProbe
    });
    let shared = crate::state::writes::SharedWrites {
        flags: writes.flags.clone(),
        forward,
        held_at_start: Default::default(),
    };
    shared.hold_at_start(reads.list().into_iter().map(|(t, _)| t).collect());
    crate::state::SharedState::new(url.clone(), config.instance_name(), reads.clone(), shared)
}

/// Each table's read flag, its gate asking the mirror for its figures.
fn read_flags(
    config: &Config,
    rules: &Arc<ArcSwap<RuleSet>>,
    recorder: &Arc<Recorder>,
    mirror: Option<&Mirror>,
) -> Arc<ReadFlags> {
    let probe: Option<MirrorProbe> = mirror.map(|m| {
        let journal = m.journal.clone();
        let stats = m.applier.stats().clone();
        Arc::new(move || stats.report(&journal)) as MirrorProbe
    });
    let opts = FlagOptions::from_config(config);
    Arc::new(ReadFlags::new(rules.clone(), opts, recorder.clone(), probe))
}

/// Shadow reads and reads served by the secondary.
fn secondary_reads(
    config: &Config,
    secondary: &crate::config::SecondaryConfig,
    rules: &Arc<ArcSwap<RuleSet>>,
    recorder: &Arc<Recorder>,
    mirror: Option<&Mirror>,
) -> (Arc<Shadow>, Arc<ServeOptions>) {
    let shadow = Shadow::new(
        ShadowOptions::new(&config.shadow, &secondary.url),
        recorder.clone(),
        rules.clone(),
        mirror.map(|m| m.applier.subscribe()),
    );
    let serve = ServeOptions::new(&config.reads, &secondary.url, &config.primary.url);
    (Arc::new(shadow), Arc::new(serve))
}

/// The journal (its in-doubt transactions resolved against the primary first), the applier
/// and the resolver of in-doubt transactions to come.
async fn start_mirror(
    config: &Config,
    secondary: &crate::config::SecondaryConfig,
    rules: &Arc<ArcSwap<RuleSet>>,
    recorder: &Arc<Recorder>,
) -> Result<(Mirror, JoinHandle<()>), StartError> {
    let resolve = ResolveConfig {
        primary: config.primary.url.clone(),
        min_age: Duration::ZERO,
        assume_committed_without_xid: config.mirror.assume_committed_without_xid,
    };
    let journal = open_journal(config, &resolve, recorder).await?;
    let applier = Applier::spawn(
        journal.clone(),
        rules.clone(),
        recorder.clone(),
        ApplierConfig::new(secondary.url.clone(), &config.mirror),
    );
    let later = ResolveConfig {
        min_age: config.mirror.resolve_after_secs,
        ..resolve
    };
    let stats = applier.stats().clone();
    let every = Duration::from_secs(1);
    let resolver = spawn_resolver(journal.clone(), later, recorder.clone(), stats, every);
    let mirror = Mirror {
        journal,
        applier,
        mode: config.mirror.mode,
        sync_timeout: config.mirror.sync_timeout_secs,
    };
    Ok((mirror, resolver))
}

/// Opens the journal and resolves the intents a previous process left in doubt, before the
/// applier starts: it never waits on an intent whose session died with that process.
async fn open_journal(
    config: &Config,
    resolve: &ResolveConfig,
    recorder: &Recorder,
) -> Result<Arc<Journal>, StartError> {
    let journal = Journal::open(JournalOptions::from_config(&config.mirror)).map_err(|source| {
        StartError::Journal {
            dir: config.mirror.journal_dir.clone(),
            source,
        }
    })?;
    let resolved = resolve_at_startup(&journal, resolve, recorder)
        .await
        .map_err(StartError::Resolve)?;
    info!(?resolved, last = journal.last_id(), "journal opened");
    Ok(journal)
}
