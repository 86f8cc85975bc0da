//! The `pgbridge` command: parse the command line, hand over to the library, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgbridge::{admin::ctl, config::Config, CliError};

#[derive(Parser)]
#[command(
    name = "pgbridge",
    version,
    about = "A transparent PostgreSQL proxy for zero-downtime migrations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The config file.
        #[arg(long, env = "PGBRIDGE_CONFIG", default_value = "pgbridge.toml")]
        config: PathBuf,
    },
    /// Work with the rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Talk to a running proxy through its admin API.
    Ctl {
        /// The admin API of the proxy.
        #[arg(long, env = "PGBRIDGE_ADMIN", default_value = "http://127.0.0.1:9187")]
        admin: String,
        /// The admin token (needed for changes).
        #[arg(long, env = "PGBRIDGE_TOKEN")]
        token: Option<String>,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Start two throwaway local PostgreSQL servers and the proxy in front of them.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate the rules; without --offline also against the live schemas of both databases.
    Check {
        /// The config file.
        #[arg(long, env = "PGBRIDGE_CONFIG", default_value = "pgbridge.toml")]
        config: PathBuf,
        /// Check the files only; connect to no database.
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// The state of the proxy: tables, read sources, mirror lag, divergences, sessions.
    Status,
    /// Change where reads of a table are served from.
    Reads {
        /// The source table, as the rules name it.
        table: String,
        /// primary, shadow or secondary.
        source: String,
        /// Why: recorded with the change.
        #[arg(long)]
        reason: Option<String>,
        /// Switch even when the safety gate refuses (mirror lag, unresolved divergences).
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => Config::load(&config)
            .map_err(CliError::user)
            .and_then(pgbridge::cli::serve::run),
        Command::Rules {
            command: RulesCommand::Check { config, offline },
        } => pgbridge::cli::rules::check(&config, offline),
        Command::Ctl {
            admin,
            token,
            command,
        } => match command {
            CtlCommand::Status => ctl::status(&admin, token.as_deref()),
            CtlCommand::Reads {
                table,
                source,
                reason,
                force,
            } => ctl::set_reads(
                &admin,
                token.as_deref(),
                &table,
                &source,
                reason.as_deref(),
                force,
            ),
        },
        Command::Demo { listen } => pgbridge::cli::demo::run(&listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("pgbridge: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}
