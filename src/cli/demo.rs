//! `pgbridge demo`: the embedded default.
//!
//! Starts two throwaway PostgreSQL servers from the machine's own binaries (see [`pgcluster`]):
//! a primary holding the legacy schema (`docker/primary-init.sql`) and a secondary holding the new
//! one (`docker/secondary-init.sql`), writes a config and `rules/dxy.toml` into a temporary
//! directory, prints how to connect, and runs the proxy in front of them until Ctrl-C. The servers
//! and the directory are removed when the proxy returns; if the process dies harder than that, the
//! servers die with it (parent-death signal) and their files are swept by the next start.
//!
//! The SQL and the rule file are compiled in, so the binary works from any directory.
//!
//! [`pgcluster`]: crate::pgcluster

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::config::Config;
use crate::pgcluster::{self, PgOptions, PgServer};
use crate::CliError;

const PRIMARY_SQL: &str = include_str!("../../docker/primary-init.sql");
const SECONDARY_SQL: &str = include_str!("../../docker/secondary-init.sql");
const SECONDARY_BACKFILL: &str = include_str!("../../docker/secondary-backfill.sql");
const DXY_RULES: &str = include_str!("../../rules/dxy.toml");
/// The demo's rule also has the seeds' daily reconciliation, so that `ctl verify --report`
/// has a report to write.
const DEMO_RECONCILE: &str = r#"
[table.reconcile]                  # the daily reconciliation report of a verify (docs/RULES.md)
group_by = ["symbol", "date_trunc('day', ts)"]
metrics = ["count", "sum(volume)", "sum(close)"]
[table.reconcile.thresholds]       # absolute differences above `warning` / `critical`
count = { critical = 0 }
"sum(close)" = { warning = 100, critical = 1000 }
"#;

/// The database the demo creates on both servers, as in docker/compose.yaml.
const DBNAME: &str = "trading";

/// Why the demo could not start. Each variant knows its exit code: 1 for the user's input, 2 for
/// something that could not be reached or started.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("--listen {listen:?} is not an address and port such as 127.0.0.1:6432")]
    BadListen { listen: String },
    #[error(
        "cannot listen on {addr}: {source}. Is another pgbridge (or pgbouncer) running there? \
         Pick another address with --listen"
    )]
    ListenTaken {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "could not start the {role} PostgreSQL server: {source}\n\
         (the demo needs the PostgreSQL 15 server binaries, e.g. `apt-get install postgresql-15`)"
    )]
    Server {
        role: &'static str,
        source: pgcluster::PgClusterError,
    },
    #[error("could not load the {role} schema into {url}: {source}")]
    Load {
        role: &'static str,
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("could not write the demo files in {}: {source}", dir.display())]
    Files {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("could not start a runtime to load the schemas: {0}")]
    Runtime(std::io::Error),
    #[error("the generated demo config is invalid (a bug in pgbridge): {0}")]
    Config(#[from] crate::config::ConfigError),
}

impl From<DemoError> for CliError {
    fn from(e: DemoError) -> Self {
        match e {
            DemoError::BadListen { .. } => CliError::user(e),
            DemoError::Config(_) => CliError::user(e),
            _ => CliError::unreachable(e),
        }
    }
}

/// Everything the demo keeps alive while the proxy runs. Dropping it stops both servers and
/// removes every file the demo wrote.
struct Demo {
    primary: PgServer,
    /// `None` with `--one-database`: the target is in the primary's database.
    secondary: Option<PgServer>,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    token: String,
}

/// `pgbridge demo --listen ADDR [--one-database]`.
pub fn run(listen: &str, one_database: bool) -> Result<(), CliError> {
    let (demo, config) = set_up(listen, one_database)?;
    print_banner(&demo, &config);
    let result = super::serve::run(config);
    // Stop the servers before saying so: dropping `demo` does both.
    drop(demo);
    eprintln!("pgbridge demo: the servers are stopped and their files removed.");
    result
}

fn set_up(listen: &str, one_database: bool) -> Result<(Demo, Config), DemoError> {
    let listen: SocketAddr = listen.parse().map_err(|_| DemoError::BadListen {
        listen: listen.to_string(),
    })?;
    // Fail before spending seconds on initdb if the proxy could not listen anyway.
    check_free(listen)?;
    let admin = pick_admin_addr(listen)?;

    let (primary, secondary) = start_servers(one_database)?;
    let dir = tempfile::Builder::new()
        .prefix("pgbridge-demo-")
        .tempdir()
        .map_err(|source| DemoError::Files {
            dir: std::env::temp_dir(),
            source,
        })?;
    let token = random_token();
    let text = demo_config(
        listen,
        admin,
        &primary.url("postgres", DBNAME),
        &secondary
            .as_ref()
            .unwrap_or(&primary)
            .url("postgres", DBNAME),
        &token,
    );
    let config_path = write_files(dir.path(), &text)?;
    let config = Config::load(&config_path)?;
    let demo = Demo {
        primary,
        secondary,
        dir,
        admin,
        token,
    };
    Ok((demo, config))
}

/// The primary and the secondary, each with its schema loaded; with `one_database`, the
/// primary alone, holding the target table beside the legacy one (the write switch needs it
/// there, src/writes/gate.rs).
fn start_servers(one_database: bool) -> Result<(PgServer, Option<PgServer>), DemoError> {
    eprintln!(
        "pgbridge demo: starting {} PostgreSQL server{} from this machine's PostgreSQL server \
         binaries (Debian: postgresql-15; initdb takes a few seconds)...",
        if one_database { "one" } else { "two" },
        if one_database { "" } else { "s" },
    );
    let start = |role| {
        PgServer::start(&PgOptions::default()).map_err(|source| DemoError::Server { role, source })
    };
    let primary = start("primary")?;
    let secondary = match one_database {
        true => None,
        false => Some(start("secondary")?),
    };
    load_schemas(&primary, secondary.as_ref())?;
    Ok((primary, secondary))
}

/// The target table's DDL of docker/secondary-init.sql, without the shared `instruments` (the
/// primary has its own).
fn target_table_sql() -> &'static str {
    let end = SECONDARY_SQL
        .find("\n-- Unmigrated")
        .unwrap_or(SECONDARY_SQL.len());
    &SECONDARY_SQL[..end]
}

fn check_free(addr: SocketAddr) -> Result<(), DemoError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| DemoError::ListenTaken { addr, source })
}

/// The admin API on its usual port 9187 when that is free, so `pgbridge ctl` works without
/// `--admin`; otherwise any free port on the same interface.
fn pick_admin_addr(listen: SocketAddr) -> Result<SocketAddr, DemoError> {
    let usual = SocketAddr::new(listen.ip(), 9187);
    if usual != listen && check_free(usual).is_ok() {
        return Ok(usual);
    }
    let any = SocketAddr::new(listen.ip(), 0);
    let bound =
        TcpListener::bind(any).map_err(|source| DemoError::ListenTaken { addr: any, source })?;
    bound
        .local_addr()
        .map_err(|source| DemoError::ListenTaken { addr: any, source })
}

/// Creates the `trading` database on both servers and loads each one's schema and sample rows
/// (without a secondary, the target table and its rows go into the primary's database).
fn load_schemas(primary: &PgServer, secondary: Option<&PgServer>) -> Result<(), DemoError> {
    // A runtime of its own, dropped before the proxy builds its own one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)?;
    rt.block_on(async {
        load_one("primary", primary, PRIMARY_SQL).await?;
        let (role, server) = match secondary {
            Some(s) => {
                load_one("secondary", s, SECONDARY_SQL).await?;
                ("secondary", s)
            }
            None => {
                let url = primary.url("postgres", DBNAME);
                execute("primary", &url, target_table_sql()).await?;
                ("primary", primary)
            }
        };
        let url = server.url("postgres", DBNAME);
        execute(role, &url, SECONDARY_BACKFILL).await
    })
}

async fn load_one(role: &'static str, server: &PgServer, sql: &str) -> Result<(), DemoError> {
    let admin_url = server.url("postgres", "postgres");
    execute(role, &admin_url, &format!("CREATE DATABASE {DBNAME}")).await?;
    execute(role, &server.url("postgres", DBNAME), sql).await
}

async fn execute(role: &'static str, url: &str, sql: &str) -> Result<(), DemoError> {
    let err = |source| DemoError::Load {
        role,
        url: url.to_string(),
        source,
    };
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(err)?;
    let driver = tokio::spawn(connection);
    let result = client.batch_execute(sql).await.map_err(err);
    // Closing the client ends the connection task; its own error, if any, is the one above.
    drop(client);
    let _ = driver.await;
    result
}

/// The config the demo runs with. Relative paths resolve against the config's directory.
fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    primary_url: &str,
    secondary_url: &str,
    token: &str,
) -> String {
    format!(
        r#"# Written by `pgbridge demo`; removed when the demo stops.
listen = "{listen}"
admin_listen = "{admin}"
rules = "rules"

[primary]
url = "{primary_url}"

[secondary]
url = "{secondary_url}"
shared_tables = ["instruments"]

[mirror]
journal_dir = "pgbridge-journal"
mode = "async"

[divergence]
log = "divergences.jsonl"
redact = false

[admin]
token = "{token}"
"#
    )
}

fn write_files(dir: &Path, config: &str) -> Result<PathBuf, DemoError> {
    let err = |source| DemoError::Files {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir(dir.join("rules")).map_err(err)?;
    let rules = format!("{DXY_RULES}{DEMO_RECONCILE}");
    std::fs::write(dir.join("rules").join("dxy.toml"), rules).map_err(err)?;
    let path = dir.join("pgbridge.toml");
    std::fs::write(&path, config).map_err(err)?;
    Ok(path)
}

/// A fresh admin token per run: the demo's admin API accepts changes only from whoever read the
/// banner.
fn random_token() -> String {
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

fn print_banner(demo: &Demo, config: &Config) {
    // The banner is the demo's output proper, so stdout; progress and logs go to stderr.
    print!("{}", banner(demo, config));
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

/// What the demo prints once it runs: how to connect, the servers behind, the admin API, the
/// files.
fn banner(demo: &Demo, config: &Config) -> String {
    let psql =
        |port: u16| format!("psql \"host=127.0.0.1 port={port} user=postgres dbname={DBNAME}\"");
    let (ip, port) = (config.listen.ip(), config.listen.port());
    let admin = format!("http://{}", demo.admin);
    let ctl = if demo.admin.port() == 9187 && demo.admin.ip().is_loopback() {
        "pgbridge ctl".to_string()
    } else {
        format!("pgbridge ctl --admin {admin}")
    };
    let (token, dir) = (&demo.token, demo.dir.path().display());
    let primary = psql(demo.primary.port());
    let (secondary, logs) = match &demo.secondary {
        Some(s) => (
            format!(
                "secondary (new schema: data_bars, instruments)\n      {}",
                psql(s.port())
            ),
            format!(
                "{}/postgres.log and {}/postgres.log",
                demo.primary.dir().display(),
                s.dir().display()
            ),
        ),
        None => (
            "secondary: the primary's own database (data_bars beside derived_data_bars)"
                .to_string(),
            format!("{}/postgres.log", demo.primary.dir().display()),
        ),
    };
    format!(
        "
pgbridge demo is running. Stop it with Ctrl-C (everything below is then removed).

  Connect through pgbridge:
    psql \"host={ip} port={port} user=postgres dbname={DBNAME}\"

  The servers behind it (PostgreSQL, trust auth on loopback):
    primary   (legacy schema: derived_data_bars, instruments)
      {primary}
    {secondary}

  Dashboard: {admin}/
  Admin API and metrics: {admin}/api/status  {admin}/metrics
    {ctl} status
    {ctl} --token {token} reads derived_data_bars shadow --reason \"compare\"
    {ctl} --token {token} reads derived_data_bars secondary --reason \"cut over\"

  Files: {dir}
    pgbridge.toml, rules/dxy.toml, divergences.jsonl, pgbridge-journal/
    server logs: {logs}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PgUrl;

    /// Host and port of a url, through tokio-postgres's own view of it.
    fn host_port(url: &PgUrl) -> (String, u16) {
        let c = url.pg_config();
        let host = match c.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            other => format!("{other:?}"),
        };
        (host, c.get_ports().first().copied().unwrap_or(5432))
    }

    #[test]
    fn the_demo_config_parses() {
        let text = demo_config(
            "127.0.0.1:6432".parse().unwrap(),
            "127.0.0.1:9187".parse().unwrap(),
            "postgres://postgres@127.0.0.1:40001/trading",
            "postgres://postgres@127.0.0.1:40002/trading",
            &random_token(),
        );
        let c = Config::parse(&text, Path::new("demo/pgbridge.toml")).expect("demo config");
        assert_eq!(host_port(&c.primary.url), ("127.0.0.1".into(), 40001));
        let secondary = c.secondary.expect("a secondary");
        assert_eq!(host_port(&secondary.url), ("127.0.0.1".into(), 40002));
        assert_eq!(secondary.shared_tables, vec!["instruments"]);
        assert_eq!(c.admin.token.as_deref().map(str::len), Some(24));
    }

    #[test]
    fn the_compose_config_parses() {
        let text = include_str!("../../docker/pgbridge.toml");
        let c = Config::parse(text, Path::new("docker/pgbridge.toml")).expect("compose config");
        assert_eq!(c.listen, "0.0.0.0:6432".parse::<SocketAddr>().unwrap());
        assert_eq!(c.admin_listen.port(), 9187);
        assert_eq!(host_port(&c.primary.url), ("primary".into(), 5432));
        let secondary = c.secondary.expect("a secondary");
        assert_eq!(host_port(&secondary.url), ("secondary".into(), 5432));
        assert!(c.admin.token.is_some());
    }

    #[test]
    fn a_bad_listen_address_is_a_user_error() {
        let err = CliError::from(set_up("nowhere", false).map(|_| ()).unwrap_err());
        assert_eq!(err.code, 1);
        assert!(err.message.contains("nowhere"), "{}", err.message);
    }

    #[test]
    fn a_taken_port_is_reported_before_any_server_starts() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = CliError::from(set_up(&addr, false).map(|_| ()).unwrap_err());
        assert_eq!(err.code, 2);
        assert!(err.message.contains("cannot listen on"), "{}", err.message);
    }

    #[test]
    fn the_demo_loads_both_schemas_on_two_servers_or_in_one_database() {
        for one_database in [false, true] {
            let listen = format!("127.0.0.1:{}", pgcluster::free_port().unwrap());
            let (demo, config) = set_up(&listen, one_database).expect("demo set-up");
            assert!(config.rules.join("dxy.toml").is_file());
            let secondary = config.secondary.as_ref().unwrap().url.clone();
            assert_eq!(
                secondary.server_addr() == config.primary.url.server_addr(),
                one_database
            );
            let target = demo.secondary.as_ref().unwrap_or(&demo.primary);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                for (server, table) in [(&demo.primary, "derived_data_bars"), (target, "data_bars")]
                {
                    let (client, conn) = tokio_postgres::connect(
                        &server.url("postgres", DBNAME),
                        tokio_postgres::NoTls,
                    )
                    .await
                    .unwrap();
                    tokio::spawn(conn);
                    let n: i64 = client
                        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                        .await
                        .unwrap()
                        .get(0);
                    // DXY and EURUSD bars on the primary; the DXY ones backfilled on the
                    // secondary (or beside them).
                    let expected = if table == "data_bars" { 60 } else { 120 };
                    assert_eq!(n, expected, "{table}");
                }
            });
            let dir = demo.dir.path().to_path_buf();
            drop(demo);
            assert!(!dir.exists());
        }
    }
}
