//! pgbridge: a transparent PostgreSQL wire-protocol proxy for zero-downtime migrations.
//!
//! A tour of the modules, in the order a client's request meets them:
//!
//! - [`cli`] is each command behind the command line: `serve`, `rules check`, `demo`.
//! - [`config`] is the typed config file, its errors with file, line and key.
//! - [`instance`] is what one running pgbridge shares: the config, the cancel keys, the drain
//!   signal, and the migration machinery it starts (rules, analyzer, recorder, mirror, flags).
//! - [`proxy`] accepts clients and relays each session to the primary, frame by frame.
//! - [`net`] is where servers are and how to reach them: addresses, cancel keys, TLS.
//! - [`protocol`] is the wire protocol without I/O: frames, startup packets, the messages
//!   pgbridge reads, edits or writes.
//! - [`sql`] reads each statement: a cheap pre-filter, the parser and its caches, the plan of
//!   each statement, and the rewrites for the primary and the secondary.
//! - [`rules`] is the rule files DBAs write: the model, parsing and checks; `rules::live` loads,
//!   hot-reloads and checks them against the databases.
//! - [`capture`] carries out each statement's plan in the session: RETURNING spliced in, row
//!   images stripped from the replies and buffered per transaction, reads held for the
//!   secondary.
//! - [`mirror`] takes a committed transaction from there: the durable journal, the applier to
//!   the secondary, in-doubt resolution, parked transactions, the mirror's figures.
//! - [`migrate`] is the jobs that run inside the proxy: the backfill of the rows that existed
//!   before mirroring, through the applier's ordered path.
//! - [`reads`] is where reads go: the routing decision, the read flags with their gate and audit,
//!   serving on the secondary, shadow reads.
//! - [`divergence`] records every difference as typed JSON lines and metrics, and compares
//!   results.
//! - [`admin`] is the admin HTTP API, `/metrics` and the `pgbridge ctl` client.
//! - [`pgcluster`] starts throwaway PostgreSQL servers from the machine's binaries, for
//!   `pgbridge demo` and the integration tests.

pub mod admin;
pub mod calendar;
pub mod capture;
pub mod cli;
pub mod config;
pub mod divergence;
pub mod instance;
pub mod migrate;
pub mod mirror;
pub mod net;
pub mod pgcluster;
pub mod protocol;
pub mod proxy;
pub mod reads;
pub mod rules;
pub mod sql;
pub mod state;
pub mod writes;

/// An error that ends a command; its code is the process's exit code.
#[derive(Debug)]
pub struct CliError {
    /// 1: the user's input is wrong; 2: something needed could not be reached; 3: a verify
    /// found differences.
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

    /// A verify found differences: exit 3.
    pub fn differences(e: impl std::fmt::Display) -> Self {
        CliError {
            code: 3,
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

impl From<instance::StartError> for CliError {
    fn from(e: instance::StartError) -> Self {
        if e.is_unreachable() {
            CliError::unreachable(e)
        } else {
            CliError::user(e)
        }
    }
}
