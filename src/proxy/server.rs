//! The accept loop: one task per client on a session thread ([`super::workers`]), a connection
//! limit, and a graceful drain.
//!
//! On SIGTERM or SIGINT pgbridge stops accepting, lets every session finish what it is doing
//! (each ends at its next idle point, between transactions with nothing in flight), and closes the
//! rest when `limits.shutdown_timeout_secs` runs out. A second signal exits at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

use super::workers::Sessions;
use crate::instance::Instance;

/// Accepts clients on `listener` until SIGTERM or SIGINT, then drains; returns after the drain.
pub async fn serve(instance: Arc<Instance>, listener: TcpListener) -> std::io::Result<()> {
    let limit = instance.config.limits.max_client_connections;
    let sessions = Arc::new(Semaphore::new(limit));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let ids = AtomicU64::new(1);
    let threads = Sessions::start(instance.config.worker_threads())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    super::metrics::get().accepted.increment(1);
                    let permit = Arc::clone(&sessions).try_acquire_owned().ok();
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    let instance = Arc::clone(&instance);
                    threads.spawn(tcp, move |tcp| super::session::serve(instance, tcp, peer, permit, id));
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
    drain(&instance, &sessions, &mut term, &mut int).await;
    drop(threads);
    Ok(())
}

async fn drain(instance: &Instance, sessions: &Semaphore, term: &mut Signal, int: &mut Signal) {
    let limit = instance.config.limits.max_client_connections;
    let busy = || limit - sessions.available_permits();
    let timeout = instance.config.limits.shutdown_timeout_secs;
    info!(
        sessions = busy(),
        ?timeout,
        "draining: no new sessions; open ones end at their next idle point"
    );
    instance.start_draining();
    // Sessions close themselves at the timeout; allow them a moment to say so to their clients.
    let hard_stop = tokio::time::Instant::now() + timeout + Duration::from_secs(2);
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
