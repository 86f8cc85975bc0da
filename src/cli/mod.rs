//! The commands behind `pgbridge`'s command line: each returns [`crate::CliError`], whose code
//! is the process's exit code.
//!
//! - [`args`]: the command line, as clap reads it.
//! - [`serve`]: `pgbridge serve`, the proxy and its admin API.
//! - [`rules`]: `pgbridge rules check`.
//! - [`demo`]: `pgbridge demo`, two throwaway servers and the proxy in front of them.
//! - `pgbridge ctl` is the admin API's client, [`crate::admin::ctl`].

pub mod args;
pub mod demo;
pub mod rules;
pub mod serve;

use std::process::ExitCode;

use clap::Parser;

use crate::admin::ctl::Ctl;
use crate::config::Config;
use crate::CliError;
use args::{Cli, Command, CtlCommand, RulesCommand};

/// `pgbridge` itself: parses the command line, runs the command, and returns its exit code
/// (printing the error, if any, on stderr).
pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("pgbridge: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve { config } => Config::load(&config)
            .map_err(CliError::user)
            .and_then(serve::run),
        Command::Rules {
            command: RulesCommand::Check { config, offline },
        } => rules::check(&config, offline),
        Command::Ctl {
            admin,
            token,
            json,
            command,
        } => {
            let dry_run = command.dry_run();
            let client = Ctl {
                admin,
                token,
                json,
                dry_run,
            };
            ctl(&client, command)
        }
        Command::Demo {
            listen,
            one_database,
        } => demo::run(&listen, one_database),
    }
}

fn ctl(ctl: &Ctl, command: CtlCommand) -> Result<(), CliError> {
    match command {
        CtlCommand::Status { table } => match table {
            Some(t) => ctl.table_status(&t),
            None => ctl.status(),
        },
        CtlCommand::Audit { table, limit } => ctl.audit(table.as_deref(), limit),
        CtlCommand::Reads {
            table,
            source,
            percent,
            reason,
            force,
            ..
        } => ctl.set_reads(&table, &source, percent, reason.as_deref(), force),
        CtlCommand::Writes {
            table,
            target,
            reason,
            force,
            timeout_ms,
            ..
        } => ctl.set_writes(&table, &target, reason.as_deref(), force, timeout_ms),
        CtlCommand::Backfill {
            table,
            chunk_rows,
            max_rows_per_sec,
            detach,
            ..
        } => ctl.backfill(&table, chunk_rows, max_rows_per_sec, detach),
        CtlCommand::Verify {
            tables,
            report,
            chunk_rows,
            max_rows_per_sec,
            detach,
            ..
        } => ctl.verify(crate::admin::ctl::VerifyArgs {
            tables: &tables,
            chunk_rows,
            max_rows_per_sec,
            report: report.as_deref(),
            detach,
        }),
        CtlCommand::Repair {
            table,
            verify,
            detach,
            ..
        } => ctl.repair(&table, verify, detach),
        CtlCommand::Jobs { id } => ctl.jobs(id),
    }
}

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
