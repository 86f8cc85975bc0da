//! Hot reload: rules take effect for new statements without a restart and without dropping a
//! session.
//!
//! A change under the rules path (seen by `notify`) or a SIGHUP reloads and re-checks the rules.
//! A valid set is swapped into the shared [`ArcSwap`] in one step, so a statement sees the old set
//! or the new one, never a mix. An invalid set is logged with every message and the last good
//! rules stay in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::load::{load_offline, load_online};
use crate::config::{Config, PgUrl};
use crate::rules::{RuleSet, RulesError};

/// Where rules come from and which databases they are checked against.
#[derive(Debug, Clone)]
pub struct Loader {
    pub path: PathBuf,
    /// With a primary, rules are checked online (and get the columns the rewrites need).
    pub primary: Option<PgUrl>,
    pub secondary: Option<PgUrl>,
}

impl Loader {
    /// The loader `serve` uses: the config's rules path, checked against both databases.
    pub fn from_config(config: &Config) -> Loader {
        Loader {
            path: config.rules.clone(),
            primary: Some(config.primary.url.clone()),
            secondary: config.secondary.as_ref().map(|s| s.url.clone()),
        }
    }

    pub async fn load(&self) -> Result<RuleSet, RulesError> {
        match &self.primary {
            Some(primary) => load_online(&self.path, primary, self.secondary.as_ref()).await,
            None => load_offline(&self.path),
        }
    }
}

/// What `serve` calls at start: the first load (an error here means the proxy must not start),
/// then [`watch`] keeping the returned rules current.
pub async fn start(loader: Loader) -> Result<(Arc<ArcSwap<RuleSet>>, JoinHandle<()>), RulesError> {
    let rules = loader.load().await?;
    tracing::info!(tables = rules.rules().len(), path = %loader.path.display(), "rules loaded");
    let current = Arc::new(ArcSwap::from_pointee(rules));
    let task = watch(loader, current.clone());
    Ok((current, task))
}

/// Reloads the rules whenever the rules path changes or SIGHUP arrives, until the task is
/// aborted. Must be called inside a tokio runtime.
pub fn watch(loader: Loader, current: Arc<ArcSwap<RuleSet>>) -> JoinHandle<()> {
    // The watcher outlives whatever started it: a span of its own, with no parent.
    let span = tracing::info_span!(parent: None, "rules_reload", path = %loader.path.display());
    let (tx, mut rx) = mpsc::unbounded_channel::<&'static str>();
    let watcher = span.in_scope(|| start_watcher(&loader.path, tx.clone()));
    tokio::spawn(forward_sighup(tx).instrument(span.clone()));
    let task = async move {
        let _watcher = watcher; // dropping it would stop the file events
        while let Some(cause) = rx.recv().await {
            // Editors write a file in several steps: let them finish, then reload once.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            reload(&loader, &current, cause).await;
        }
    };
    tokio::spawn(task.instrument(span))
}

fn start_watcher(
    path: &Path,
    tx: mpsc::UnboundedSender<&'static str>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send("file change");
        }
    };
    // A file is watched through its directory: editors replace files rather than write them.
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map_or(PathBuf::from("."), Path::to_path_buf)
    };
    let started = notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
    match started {
        Ok(w) => Some(w),
        Err(error) => {
            tracing::warn!(%error, path = %dir.display(), "cannot watch the rules; reload with SIGHUP");
            None
        }
    }
}

async fn forward_sighup(tx: mpsc::UnboundedSender<&'static str>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; rules reload on file changes only");
        return;
    };
    while hup.recv().await.is_some() {
        if tx.send("SIGHUP").is_err() {
            return;
        }
    }
}

/// Loads the rules once; swaps them in when valid, logs every problem when not.
pub async fn reload(loader: &Loader, current: &ArcSwap<RuleSet>, cause: &str) {
    match loader.load().await {
        Ok(rules) => {
            tracing::info!(cause, tables = rules.rules().len(), "rules reloaded");
            current.store(Arc::new(rules));
        }
        Err(RulesError::Invalid(problems)) => {
            for problem in &problems {
                tracing::error!(cause, %problem, "invalid rule; the last good rules stay in force");
            }
        }
        Err(error) => {
            tracing::error!(cause, %error, "rules not reloaded; the last good rules stay in force");
        }
    }
}
