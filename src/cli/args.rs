//! The command line, as clap reads it: every command, its arguments and their help.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pgbridge",
    version,
    about = "A transparent PostgreSQL proxy for zero-downtime migrations"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Print the admin API's JSON answer as it is.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Start two throwaway local PostgreSQL servers and the proxy in front of them.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
        /// One server: the new table in the legacy database, as moving the writes needs
        /// (`ctl writes`); by default the new schema has a server of its own.
        #[arg(long)]
        one_database: bool,
    },
}

#[derive(Subcommand)]
pub enum RulesCommand {
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
pub enum CtlCommand {
    /// The state of the proxy: tables, read sources, mirror lag, divergences, sessions; with
    /// TABLE, that table's phase in its migration and the command of the next step.
    Status {
        /// One migrated table.
        table: Option<String>,
    },
    /// The audit trail, newest first: every switch, job and forced override, by instance.
    Audit {
        /// One table's entries only.
        table: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Change where reads of a table are served from.
    Reads {
        /// The source table, as the rules name it.
        table: String,
        /// primary, shadow or secondary.
        source: String,
        /// The share of sessions (1 to 100, sticky per session) whose reads go that way; the
        /// others' stay on the primary.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100))]
        percent: u8,
        /// Why: recorded with the change.
        #[arg(long)]
        reason: Option<String>,
        /// Switch even when the safety gate refuses (mirror lag, unresolved divergences).
        #[arg(long)]
        force: bool,
        /// Say what would be done and what the gate would say; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Change where writes of a table are executed: secondary (the target becomes the
    /// authority, mirrored back into the legacy table), primary (the way back), or complete
    /// (writes stay on the secondary and the reverse mirror stops: the legacy table is retired).
    Writes {
        /// The source table, as the rules name it.
        table: String,
        /// primary, secondary or complete.
        target: String,
        /// Why: recorded with the change.
        #[arg(long)]
        reason: Option<String>,
        /// Switch even when the gate refuses (no clean recent verify, lag, ...); what it
        /// overrode is recorded.
        #[arg(long)]
        force: bool,
        /// How long the table's writes may be held while its transactions end and the mirror
        /// drains, in milliseconds; past it the switch is aborted (default 5000).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Say what would be done and what the gate would say; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy the source rows that existed before mirroring to the target, while applications
    /// keep writing; resumable. Waits for the job with a progress bar unless --detach.
    Backfill {
        /// The source table, as the rules name it.
        table: String,
        /// Rows per chunk (each read in one snapshot on the primary; default 5000).
        #[arg(long)]
        chunk_rows: Option<i64>,
        /// At most this many rows per second (default 5000; 0: unlimited).
        #[arg(long)]
        max_rows_per_sec: Option<i64>,
        /// Start the job and return at once.
        #[arg(long)]
        detach: bool,
        /// Say what would be done and what the gate would say; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Compare the rules' image of the source with the target, consistently with the mirror;
    /// exit 0 equal, 3 differences found. Waits with a progress bar unless --detach.
    Verify {
        /// The source tables (every verifiable one when none).
        tables: Vec<String>,
        /// Write the reconciliation report (`[table.reconcile]`) to this CSV file.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
        /// Rows per chunk (each read in one snapshot on the primary; default 5000).
        #[arg(long)]
        chunk_rows: Option<i64>,
        /// At most this many rows per second (0: unlimited).
        #[arg(long)]
        max_rows_per_sec: Option<i64>,
        /// Start the job and return at once.
        #[arg(long)]
        detach: bool,
        /// Say what would be done and what the gate would say; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Make the target equal to the source where a verify found it different (missing and
    /// differing rows copied, extra rows deleted), then check those keys again.
    Repair {
        /// The source table.
        table: String,
        /// The verify job whose findings to repair (default: the table's last verify).
        #[arg(long)]
        verify: Option<i64>,
        /// Start the job and return at once.
        #[arg(long)]
        detach: bool,
        /// Say what would be done and what the gate would say; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Backfill, verify and repair jobs: state, progress, rate, ETA, result; all, or job ID.
    Jobs {
        /// One job's id.
        id: Option<i64>,
    },
}

impl CtlCommand {
    /// Whether a mutating command was asked for with `--dry-run`.
    pub fn dry_run(&self) -> bool {
        match self {
            CtlCommand::Reads { dry_run, .. }
            | CtlCommand::Writes { dry_run, .. }
            | CtlCommand::Backfill { dry_run, .. }
            | CtlCommand::Verify { dry_run, .. }
            | CtlCommand::Repair { dry_run, .. } => *dry_run,
            CtlCommand::Status { .. } | CtlCommand::Audit { .. } | CtlCommand::Jobs { .. } => false,
        }
    }
}
