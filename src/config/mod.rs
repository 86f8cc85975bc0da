//! The typed configuration of `pgbridge serve`: one TOML file, every section but `[primary]`
//! optional.
//!
//! Every value is validated while it is deserialized, so a bad value is reported by the TOML
//! deserializer with its span: the error names the file, the line and column, and the key
//! (`pgbridge.toml:3:10: listen: invalid socket address syntax`). Relative paths in the file are
//! resolved against the directory that holds the file, so a config means the same thing whatever
//! the current directory of the process is.
//!
//! - [`databases`]: `[primary]`, `[secondary]` and the [`PgUrl`] connection strings, with
//!   `conninfo.rs` taking their TLS keys out for pgbridge to read itself.
//! - [`mirror`]: `[mirror]`, the journal and the applier.
//! - [`reads`]: `[reads]` and `[shadow]`, the secondary's part in reads.
//! - [`ops`]: `[admin]`, `[limits]`, `[tls]` and `[divergence]`, running the proxy itself.
//! - [`load`]: reading the file, the checks between keys, `FILE:LINE:COL: key: message` errors.

mod conninfo;
pub mod databases;
mod de;
pub mod jobs;
pub mod load;
pub mod mirror;
pub mod ops;
pub mod reads;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use databases::{PgUrl, PrimaryConfig, SecondaryConfig};
pub use jobs::VerifyConfig;
pub use load::{line_col, ConfigError};
pub use mirror::{MirrorConfig, MirrorMode, OnError, OnFull};
pub use ops::{AdminConfig, DivergenceConfig, LimitsConfig, TlsConfig};
pub use reads::{ReadsConfig, ShadowConfig};
pub use state::StateConfig;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where applications connect.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The admin HTTP API and `/metrics`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// A directory of `*.toml` rule files, or one file.
    #[serde(default = "default_rules")]
    pub rules: PathBuf,
    /// The legacy database: client sessions are relayed here.
    pub primary: PrimaryConfig,
    /// The new database. Optional while nothing is migrated yet.
    #[serde(default)]
    pub secondary: Option<SecondaryConfig>,
    #[serde(default)]
    pub mirror: MirrorConfig,
    #[serde(default)]
    pub divergence: DivergenceConfig,
    /// When set, clients may connect with `sslmode=require`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub shadow: ShadowConfig,
    #[serde(default)]
    pub reads: ReadsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
    /// Where the instances' shared state lives (src/config/state.rs).
    #[serde(default)]
    pub state: StateConfig,
    /// Threads that run sessions; defaults to the number of cores less one.
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// Whether the file named `rules` itself (else the default `rules` may be absent: no rules).
    #[serde(skip)]
    pub rules_given: bool,
}

impl Config {
    /// The number of threads that run sessions (src/proxy/workers.rs): by default one per core
    /// but the one the control plane runs on, so 1 on two cores, where one thread that also runs
    /// the control plane costs least (bench/pgbench.sh).
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.filter(|n| *n > 0).unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            cores.saturating_sub(1).max(1)
        })
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6432))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9187))
}
fn default_rules() -> PathBuf {
    PathBuf::from("rules")
}
