//! The accept loop: one task per client, a connection limit, and a graceful drain.
//!
//! On SIGTERM or SIGINT pgbridge stops accepting, lets every session finish what it is doing
//! (each ends at its next idle point, between transactions with nothing in flight), and closes the
//! rest when `limits.shutdown_timeout_secs` runs out. A second signal exits at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::migration::Migration;
use crate::net::cancel::CancelRegistry;
use crate::CliError;

/// What every session shares.
pub struct Proxy {
    pub config: Config,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub cancels: Arc<CancelRegistry>,
    /// Rules, analyzer and mirror; `None` for a plain relay.
    pub migration: Option<Migration>,
    drain: watch::Sender<bool>,
}

impl Proxy {
    pub fn new(config: Config, migration: Option<Migration>) -> Result<Arc<Proxy>, CliError> {
        let tls = match &config.tls {
            Some(t) => Some(crate::net::tls::acceptor(&t.cert, &t.key).map_err(CliError::user)?),
            None => None,
        };
        Ok(Arc::new(Proxy {
            config,
            tls,
            cancels: CancelRegistry::new(),
            migration,
            drain: watch::channel(false).0,
        }))
    }

    /// Resolves (in [`watch::Receiver::wait_for`]) when pgbridge starts draining.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }
}

/// `pgbridge serve`: runs until SIGTERM or SIGINT, then drains.
pub fn run(config: Config) -> Result<(), CliError> {
    crate::admin::init_logging();
    // One thread: no cross-thread wake-ups at all, the cheapest relay where cores are scarce.
    let threads = config.worker_threads();
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = builder
        .enable_all()
        .thread_name("pgbridge")
        .build()
        .map_err(CliError::unreachable)?;
    runtime.block_on(serve(config))
}

/// Binds both listeners, then serves until a signal; returns after the drain.
pub async fn serve(config: Config) -> Result<(), CliError> {
    let metrics = crate::admin::metrics::install();
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| CliError::unreachable(format!("cannot listen on {}: {e}", config.listen)))?;
    let admin = TcpListener::bind(config.admin_listen).await.map_err(|e| {
        CliError::unreachable(format!(
            "cannot listen on {} (admin_listen): {e}",
            config.admin_listen
        ))
    })?;
    let migration = Migration::start(&config).await?;
    let proxy = Proxy::new(config, migration)?;
    let sessions = Arc::new(Semaphore::new(proxy.config.limits.max_client_connections));
    tokio::spawn(crate::admin::serve(admin, Arc::clone(&proxy), metrics));
    info!(listen = %proxy.config.listen, admin = %proxy.config.admin_listen,
          primary = ?proxy.config.primary.url, "pgbridge is serving");

    let mut term = signal(SignalKind::terminate()).map_err(CliError::unreachable)?;
    let mut int = signal(SignalKind::interrupt()).map_err(CliError::unreachable)?;
    let ids = AtomicU64::new(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    crate::admin::metrics::get().accepted.increment(1);
                    let permit = Arc::clone(&sessions).try_acquire_owned().ok();
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(crate::session::serve(Arc::clone(&proxy), tcp, peer, permit, id));
                }
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    drain(&proxy, &sessions, &mut term, &mut int).await;
    Ok(())
}

async fn drain(
    proxy: &Proxy,
    sessions: &Semaphore,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    let limit = proxy.config.limits.max_client_connections;
    let busy = || limit - sessions.available_permits();
    info!(sessions = busy(), timeout = ?proxy.config.limits.shutdown_timeout_secs,
          "draining: no new sessions; open ones end at their next idle point");
    proxy.drain.send_replace(true);
    // Sessions close themselves at the timeout; allow them a moment to say so to their clients.
    let hard_stop = tokio::time::Instant::now()
        + proxy.config.limits.shutdown_timeout_secs
        + Duration::from_secs(2);
    loop {
        if busy() == 0 {
            info!("drained");
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = tokio::time::sleep_until(hard_stop) => {
                warn!(sessions = busy(), "drain timed out");
                return;
            }
            _ = term.recv() => { warn!("second signal: exiting now"); return; }
            _ = int.recv() => { warn!("second signal: exiting now"); return; }
        }
    }
}
