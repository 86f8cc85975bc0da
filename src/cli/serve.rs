//! `pgbridge serve`: binds the client and admin listeners, starts the instance (rules, mirror,
//! read flags), then serves clients until SIGTERM or SIGINT and drains.

use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::info;

use crate::config::Config;
use crate::instance::Instance;
use crate::CliError;

/// Runs until SIGTERM or SIGINT, then drains.
pub fn run(config: Config) -> Result<(), CliError> {
    super::init_logging();
    // The control plane (accept loop, admin API, mirror, shared state) runs on this thread; the
    // sessions on `worker_threads` threads of their own (src/proxy/workers.rs), or on this one
    // too when that is 1.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("pgbridge")
        .build()
        .map_err(CliError::unreachable)?;
    runtime.block_on(serve(config))
}

/// Binds both listeners, then serves until a signal; returns after the drain.
pub async fn serve(config: Config) -> Result<(), CliError> {
    let instance_name = config.state_url().map(|_| config.instance_name());
    let metrics = crate::admin::metrics::install_for(instance_name.as_deref());
    // Registered with the recorder now, so they show from the start.
    crate::proxy::metrics::get();
    let listener = bind(config.listen, "").await?;
    let admin = bind(config.admin_listen, " (admin_listen)").await?;
    let instance = Instance::start(config).await?;
    tokio::spawn(crate::admin::serve(admin, Arc::clone(&instance), metrics));
    info!(listen = %instance.config.listen, admin = %instance.config.admin_listen,
          primary = ?instance.config.primary.url, "pgbridge is serving");
    crate::proxy::server::serve(instance, listener)
        .await
        .map_err(CliError::unreachable)
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::unreachable(format!("cannot listen on {addr}{what}: {e}")))
}
