//! The DXY migration of the docs, set up for a test: both schemas in a fresh database pair and
//! pgbridge in front with rules/dxy.toml (or a variant of it), mirroring to the secondary.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::*;

pub const PRIMARY_DDL: &str = include_str!("../../docker/primary-init.sql");
pub const SECONDARY_DDL: &str = include_str!("../../docker/secondary-init.sql");
pub const DXY_RULE: &str = include_str!("../../rules/dxy.toml");

/// The admin token of the bridges these helpers start.
pub const TOKEN: &str = "test-token";

pub const INSERT: &str =
    "INSERT INTO derived_data_bars (symbol, ts, open, high, low, close, volume) VALUES";

/// pgbridge in front of database `db` on the two servers (the primary's sample rows removed, so
/// that both sides start empty), with rule file text `rule` and `extra` config lines.
pub fn mirrored_with(
    primary_port: u16,
    secondary_port: u16,
    db: &str,
    rule: &str,
    extra: &str,
) -> (Bridge, String) {
    mirrored_with_params(primary_port, secondary_port, db, rule, extra, "")
}

/// [`mirrored_with`], with url parameters `params` (`sslmode=require&...`, or empty) on both
/// databases' urls.
pub fn mirrored_with_params(
    primary_port: u16,
    secondary_port: u16,
    db: &str,
    rule: &str,
    extra: &str,
    params: &str,
) -> (Bridge, String) {
    let db = db.to_string();
    psql_on(primary_port, &db, PRIMARY_DDL);
    psql_on(primary_port, &db, "TRUNCATE derived_data_bars");
    psql_on(secondary_port, &db, SECONDARY_DDL);
    let url = |port| {
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{params}")
        };
        format!("postgres://postgres@127.0.0.1:{port}/{db}{query}")
    };
    let (port, admin, config) = dxy_config(&url(primary_port), &url(secondary_port), rule, extra);
    let bridge = Bridge::start_with_config(port, admin, &config);
    (bridge, db)
}

/// A config of pgbridge in front of the `primary` and `secondary` urls with rule file text
/// `rule` and `extra` config lines, and the ports it listens on: `(port, admin port, config)`.
/// The rule files and journal are kept until the test process ends.
pub fn dxy_config(primary: &str, secondary: &str, rule: &str, extra: &str) -> (u16, u16, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/dxy.toml"), rule).unwrap();
    let port = pgbridge::pgcluster::free_port().unwrap();
    let admin = pgbridge::pgcluster::free_port().unwrap();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nrules = \"{rules}\"\n\
         [primary]\nurl = \"{primary}\"\n\
         [secondary]\nurl = \"{secondary}\"\nshared_tables = [\"instruments\"]\n\
         [mirror]\njournal_dir = \"{journal}\"\n{extra}\n\
         [divergence]\nlog = \"{log}\"\nredact = false\n\
         [admin]\ntoken = \"{TOKEN}\"\n",
        rules = dir.path().join("rules").display(),
        journal = dir.path().join("journal").display(),
        log = dir.path().join("divergences.jsonl").display(),
    );
    std::mem::forget(dir);
    (port, admin, config)
}

pub fn status(bridge: &Bridge) -> serde_json::Value {
    let (code, body) = bridge.admin_get("/api/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until the applier has applied everything journaled; returns the journal position.
pub fn wait_applied(bridge: &Bridge) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(bridge);
        let journal = s["mirror"]["journal_seq"].as_u64().unwrap();
        let applied = s["mirror"]["applied_seq"].as_u64().unwrap();
        if applied >= journal {
            return journal;
        }
        assert!(
            Instant::now() < deadline,
            "mirror stuck: {s}\n{}",
            bridge.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of the samples of metric `name` whose labels include `label` (`result="equal"`).
pub fn metric(bridge: &Bridge, name: &str, label: &str) -> f64 {
    let (_, body) = bridge.admin_get("/metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Switches where reads of the DXY table are served (forced past the safety gate).
pub fn set_reads(bridge: &Bridge, source: &str) {
    set_reads_percent(bridge, source, 100);
}

/// Switches where reads of the DXY table are served for `percent` of the sessions.
pub fn set_reads_percent(bridge: &Bridge, source: &str, percent: u8) {
    let body = format!(
        "{{\"source\":\"{source}\",\"percent\":{percent},\"reason\":\"test\",\"force\":true}}"
    );
    let (code, answer) = http(
        bridge.admin_port,
        "PUT",
        "/api/tables/derived_data_bars/reads",
        Some(TOKEN),
        Some(&body),
    );
    assert_eq!(code, 200, "{answer}");
}

/// The divergence records of `bridge`'s log, once there are at least `n` (waits up to 10 s).
pub fn divergence_records(bridge: &Bridge, n: usize) -> Vec<serde_json::Value> {
    let config = std::fs::read_to_string(bridge.dir.path().join("pgbridge.toml")).unwrap();
    let config: toml::Table = config.parse().unwrap();
    let log = config["divergence"]["log"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if records.len() >= n {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{} record(s), not {n}: {records:#?}",
            records.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
