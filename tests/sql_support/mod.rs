//! Shared by the rules_* and sql_* tests: one throwaway PostgreSQL server per test binary, a fresh
//! pair of databases (primary, secondary) per test, loaded with the DXY schemas of docker/.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use pgbridge::pgcluster::{PgOptions, PgServer};
use tokio_postgres::{Client, NoTls};

pub const PRIMARY_DDL: &str = include_str!("../../docker/primary-init.sql");
pub const SECONDARY_DDL: &str = include_str!("../../docker/secondary-init.sql");
pub const DXY_RULES: &str = include_str!("../../rules/dxy.toml");

static SERVER: Mutex<Option<PgServer>> = Mutex::new(None);
static PORT: OnceLock<u16> = OnceLock::new();

extern "C" fn stop_server() {
    if let Ok(mut s) = SERVER.lock() {
        s.take();
    }
}

/// The port of this binary's server, started on first use. Missing binaries fail the test.
pub fn port() -> u16 {
    *PORT.get_or_init(|| {
        let server = PgServer::start(&PgOptions::default())
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL for the tests: {e}"));
        let port = server.port();
        *SERVER.lock().unwrap() = Some(server);
        unsafe { libc::atexit(stop_server) };
        port
    })
}

pub fn url(db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/{db}", port())
}

pub async fn connect(db: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(&url(db), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh database named after the test, with `ddl` run in it.
pub async fn fresh_db(tag: &str, ddl: &str) -> String {
    let name = format!(
        "{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = connect("postgres").await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let db = connect(&name).await;
    db.batch_execute(ddl).await.unwrap();
    name
}

/// A primary with the legacy DXY schema and a secondary with the new one.
pub async fn dxy_pair() -> (String, String) {
    (
        fresh_db("p", PRIMARY_DDL).await,
        fresh_db("s", SECONDARY_DDL).await,
    )
}

/// A config file and rules directory in a temp dir, for the given databases and rules.
pub fn config_dir(primary: &str, secondary: &str, rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/dxy.toml"), rules).unwrap();
    let config = format!(
        "rules = \"rules\"\n[primary]\nurl = \"{}\"\n[secondary]\nurl = \"{}\"\n",
        url(primary),
        url(secondary)
    );
    std::fs::write(dir.path().join("pgbridge.toml"), config).unwrap();
    dir
}

/// The rows of a simple query, as text.
pub async fn rows(c: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}\n{e:?}"));
    msgs.into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Rules from `text`, loaded and checked against the two databases.
pub async fn ruleset(primary: &str, secondary: &str, text: &str) -> pgbridge::rules::RuleSet {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, text).unwrap();
    let p: pgbridge::config::PgUrl = url(primary).parse().unwrap();
    let s: pgbridge::config::PgUrl = url(secondary).parse().unwrap();
    pgbridge::rules::load_online(&path, &p, Some(&s))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// An analyzer over fixed rules.
pub fn analyzer(rules: pgbridge::rules::RuleSet) -> pgbridge::sql::Analyzer {
    let live = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(rules));
    pgbridge::sql::Analyzer::new(live, 1000)
}

/// The DXY rule with the columns the online check would find.
pub fn dxy_checked_rules() -> pgbridge::rules::RuleSet {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dxy.toml");
    std::fs::write(&path, DXY_RULES).unwrap();
    let offline = pgbridge::rules::load_offline(&path).unwrap();
    let mut rule = (*offline.rules()[0]).clone();
    let col = |name: &str, ty: &str| pgbridge::rules::Column {
        name: name.into(),
        type_name: ty.into(),
        category: 'X',
        not_null: true,
        has_default: name == "volume",
    };
    let num = "numeric(18,6)";
    let source = vec![
        col("symbol", "text"),
        col("ts", "timestamp with time zone"),
        col("open", num),
        col("high", num),
        col("low", num),
        col("close", num),
        col("volume", "bigint"),
    ];
    let mut target = source.clone();
    target[5].name = "close_px".into();
    rule.source_columns = Some(source);
    rule.target_columns = Some(target);
    rule.conflict_key = Some(vec!["symbol".into(), "timeframe".into(), "ts".into()]);
    pgbridge::rules::RuleSet::new(vec![rule])
}
