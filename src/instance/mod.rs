//! One running pgbridge: what every session, the admin API and the background tasks share.
//!
//! [`Instance`] holds the config, the TLS acceptor, the cancel keys of the live sessions, the
//! drain signal, and, when rules are configured, the [`Migration`] machinery (live rules, the
//! SQL analyzer, the divergence recorder, the journal and applier, the read flags, shadow reads
//! and secondary serving). It is built once by `pgbridge serve` and shared in an `Arc`; the
//! modules that use it (the proxy's sessions, the admin API) never build it themselves.

pub mod migration;
pub mod writes;

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::net::cancel::CancelRegistry;
use crate::net::tls::TlsError;

pub use migration::{Migration, Mirror, StartError};

/// What every session of this process shares.
pub struct Instance {
    pub config: Config,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub cancels: Arc<CancelRegistry>,
    /// Rules, analyzer and mirror; `None` for a plain relay.
    pub migration: Option<Migration>,
    drain: watch::Sender<bool>,
}

impl Instance {
    pub fn new(config: Config, migration: Option<Migration>) -> Result<Arc<Instance>, TlsError> {
        let tls = match &config.tls {
            Some(t) => Some(crate::net::tls::acceptor(&t.cert, &t.key)?),
            None => None,
        };
        let cancels = CancelRegistry::new();
        if let Some(m) = &migration {
            if let Some(state) = &m.state {
                let sessions = cancels.clone();
                let lag = m
                    .mirror
                    .as_ref()
                    .map(|m| (m.journal.clone(), m.applier.stats().clone()));
                state.spawn(Arc::new(move || {
                    let lag = lag.as_ref().map_or(0.0, |(j, s)| s.report(j).lag_seconds);
                    (sessions.len() as u64, lag)
                }));
                if !config.mirror.order_rows {
                    warn_unordered(state.clone());
                }
            }
        }
        Ok(Arc::new(Instance {
            config,
            tls,
            cancels,
            migration,
            drain: watch::channel(false).0,
        }))
    }

    /// Loads the rules, starts the mirror, and builds the instance.
    pub async fn start(config: Config) -> Result<Arc<Instance>, StartError> {
        let migration = Migration::start(&config).await?;
        Ok(Instance::new(config, migration)?)
    }

    /// Resolves (in [`watch::Receiver::wait_for`]) when pgbridge starts draining.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }

    /// Sessions end at their next idle point from now on.
    pub fn start_draining(&self) {
        self.drain.send_replace(true);
    }

    /// Client sessions open now.
    pub fn sessions(&self) -> usize {
        self.cancels.len()
    }
}

/// Warns (once) when other instances share the state while `[mirror] order_rows` is off: their
/// writes of a row this instance also writes may reach the target in either order.
fn warn_unordered(state: Arc<crate::state::SharedState>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let others = state.other_live();
            if !others.is_empty() {
                tracing::warn!(others = ?others, "other instances share this state but [mirror] order_rows is off: \
                    writes of one row through two instances may reach the target in either order");
                return;
            }
        }
    });
}
