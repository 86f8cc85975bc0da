//! The commands behind `pgbridge`'s command line (clap lives in `main.rs`): each returns
//! [`crate::CliError`], whose code is the process's exit code.
//!
//! - [`serve`]: `pgbridge serve`, the proxy and its admin API.
//! - [`rules`]: `pgbridge rules check`.
//! - [`demo`]: `pgbridge demo`, two throwaway servers and the proxy in front of them.
//! - `pgbridge ctl` is the admin API's client, [`crate::admin::ctl`].

pub mod demo;
pub mod rules;
pub mod serve;

/// Logs to stderr; `RUST_LOG` (or `PGBRIDGE_LOG`) sets the filter, `info` by default.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("PGBRIDGE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
