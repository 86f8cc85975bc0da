//! pgbridge: a transparent PostgreSQL wire-protocol proxy for zero-downtime migrations.
//!
//! A tour of the modules, in the order a client's bytes meet them:
//!
//! - [`server`] accepts clients, enforces the connection limit and drains on SIGTERM.
//! - [`session`] runs one client session: SSL/GSS negotiation, the startup packet, the connection
//!   to the primary and the authentication exchange, then hands both sockets to the relay.
//! - [`relay`] moves bytes between client and primary, frame-aware but copy-free: frames are found
//!   by their 5-byte headers and forwarded as the original bytes; only the few that must be
//!   inspected are decoded.
//! - [`protocol`] holds the wire protocol pieces without I/O: frame scanning, the startup packet,
//!   and the few messages pgbridge writes itself (ErrorResponse, BackendKeyData).
//! - [`primary`] is where the primary is (TCP or a Unix-domain socket) and how to connect.
//! - [`rules`] reads, checks and hot-reloads the rule files DBAs write.
//! - [`sql`] reads each statement: a cheap pre-filter, the parser and a cache, classification, and
//!   the read, capture, apply and statement rewrites.
//! - [`migration`] is what `serve` starts when there are rules: live rules, analyzer, recorder,
//!   journal and applier.
//! - [`capture`] captures the committed writes of a session to migrated tables, for the mirror.
//! - [`cancel`] maps the cancel keys pgbridge hands to clients to the primary's own.
//! - [`tls`] loads the certificate for TLS termination.
//! - [`admin`] serves the admin HTTP API and `/metrics`, and holds the `pgbridge ctl` client.
//! - [`route`] holds each migrated table's read source (primary, shadow, secondary), its safety
//!   gate and audit log, and decides where one statement goes.
//! - [`shadow`] runs shadow reads on the secondary (sampled, bounded, with a timeout) and
//!   compares them with the primary's answer.
//! - [`mirror`] takes a committed transaction's row images from the session: the durable journal,
//!   the applier to the secondary, in-doubt resolution, mirror status.
//! - [`divergence`] records every difference found as typed JSON lines and metrics.
//! - [`config`] is the typed config file.
//! - [`pgcluster`] starts throwaway PostgreSQL servers from the machine's binaries, for
//!   `pgbridge demo` and the integration tests.

pub mod admin;
pub mod capture;
pub mod config;
pub mod demo;
pub mod divergence;
pub mod migration;
pub mod mirror;
pub mod net;
pub mod pgcluster;
pub mod protocol;
pub mod reads;
pub mod relay;
pub mod rules;
pub mod server;
pub mod session;
pub mod sql;

use std::path::Path;

/// An error that ends a command, with the exit code of CONTRACT.md.
#[derive(Debug)]
pub struct CliError {
    /// 1: the user's input is wrong; 2: something needed could not be reached.
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// Bad config, invalid rules, a refused change: exit 1.
    pub fn user(e: impl std::fmt::Display) -> Self {
        CliError {
            code: 1,
            message: e.to_string(),
        }
    }

    /// A database, the admin API or a port could not be reached: exit 2.
    pub fn unreachable(e: impl std::fmt::Display) -> Self {
        CliError {
            code: 2,
            message: e.to_string(),
        }
    }
}

/// `pgbridge rules check`: every problem on stderr as `FILE:LINE:COL: message` (exit 1), a
/// database that cannot be reached exit 2, and on success one summary line per table on stdout.
pub fn rules_check(config: &Path, offline: bool) -> Result<(), CliError> {
    let config = config::Config::load(config).map_err(CliError::user)?;
    let checked = if offline {
        rules::load_offline(&config.rules)
    } else {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CliError::unreachable)?;
        let secondary = config.secondary.as_ref().map(|s| &s.url);
        runtime.block_on(rules::load_online(
            &config.rules,
            &config.primary.url,
            secondary,
        ))
    };
    match checked {
        Ok(set) => {
            for rule in set.rules() {
                println!("{}", rule.summary());
            }
            println!(
                "{}: {} rule(s) valid",
                config.rules.display(),
                set.rules().len()
            );
            Ok(())
        }
        Err(rules::RulesError::Invalid(problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            Err(CliError::user(format!(
                "{} problem(s) in the rules",
                problems.len()
            )))
        }
        Err(e) => Err(CliError::unreachable(e)),
    }
}
