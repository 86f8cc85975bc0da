//! Jobs (backfill, verify, repair) driven as an operator drives them, shared by
//! tests/backfill.rs, tests/backfill_load.rs and tests/verify.rs: DXY rows written straight to a
//! primary (the mirror never sees them), the job API and `ctl`, and the comparison of the target
//! with the rule's image of the source.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::dxy::*;
use super::*;

/// The rule's image of the source's DXY rows, in the target's column order.
pub const EXPECTED: &str = "SELECT 'DXY.IDX', '1m', ts, open, high, low, close, volume, 't' \
    FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts";
pub const ACTUAL: &str =
    "SELECT symbol, timeframe, ts, open, high, low, close_px, volume, is_synthetic \
    FROM data_bars ORDER BY ts";

/// `n` DXY rows a minute apart from 2026-01-01 (and an ABC row, outside the rule, every 100th
/// minute) written straight to the primary on `port`.
pub fn insert_unmirrored(port: u16, db: &str, n: usize) {
    psql_on(
        port,
        db,
        &format!(
            "INSERT INTO derived_data_bars (symbol, ts, open, high, low, close, volume) \
             SELECT s, '2026-01-01 00:00:00+00'::timestamptz + i * interval '1 minute', \
             100 + i % 7, 101 + i % 5, 99, 100.5 + (i % 11) / 8.0, i \
             FROM generate_series(0, {}) AS i, (VALUES ('DXY'), ('ABC')) AS v(s) \
             WHERE s = 'DXY' OR i % 100 = 0",
            n - 1
        ),
    );
}

/// The DXY rule with the seeds' daily reconciliation.
pub fn reconciled_rule() -> String {
    format!(
        "{DXY_RULE}\n[table.reconcile]\ngroup_by = [\"symbol\", \"date_trunc('day', ts)\"]\n\
         metrics = [\"count\", \"sum(volume)\", \"sum(close)\"]\n\
         [table.reconcile.thresholds]\ncount = {{ critical = 0 }}\n\
         \"sum(close)\" = {{ warning = 100, critical = 1000 }}\n"
    )
}

/// pgbridge in front of a fresh DXY pair, and `n` DXY rows (and some ABC rows, outside the
/// rule) written straight to the primary, which the mirror never sees.
pub fn with_unmirrored_rows(hint: &str, n: usize) -> (Bridge, String) {
    with_unmirrored_rows_rule(hint, n, DXY_RULE, "")
}

/// [`with_unmirrored_rows`] with `extra` config lines.
pub fn with_unmirrored_rows_and(hint: &str, n: usize, extra: &str) -> (Bridge, String) {
    with_unmirrored_rows_rule(hint, n, DXY_RULE, extra)
}

/// [`with_unmirrored_rows`] with rule file text `rule` and `extra` config lines.
pub fn with_unmirrored_rows_rule(
    hint: &str,
    n: usize,
    rule: &str,
    extra: &str,
) -> (Bridge, String) {
    let db = fresh_db(hint);
    let c = cluster();
    let (bridge, db) = mirrored_with(c.primary_port, c.secondary_port, &db, rule, extra);
    insert_unmirrored(c.primary_port, &db, n);
    (bridge, db)
}

/// `POST path` with the token and JSON `body`: the status code and the answer.
pub fn post(bridge: &Bridge, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (code, answer) = http(bridge.admin_port, "POST", path, Some(TOKEN), Some(body));
    let value = serde_json::from_str(&answer).unwrap_or(serde_json::Value::Null);
    (code, value)
}

/// An unthrottled backfill of the DXY table, waited for; the job as it ended.
pub fn backfilled(bridge: &Bridge) -> serde_json::Value {
    let id = start_job(bridge, "{\"max_rows_per_sec\":0}");
    wait_state(bridge, id, "done")
}

/// `POST /api/tables/{table}/backfill` with JSON `body`: the status code and the answer.
pub fn start(bridge: &Bridge, table: &str, body: &str) -> (u16, serde_json::Value) {
    post(bridge, &format!("/api/tables/{table}/backfill"), body)
}

/// Starts a backfill of the DXY table that must be accepted; its job id.
pub fn start_job(bridge: &Bridge, body: &str) -> i64 {
    let (code, answer) = start(bridge, "derived_data_bars", body);
    assert_eq!(code, 202, "{answer}");
    answer["job"].as_i64().unwrap()
}

/// `pgbridge ctl` against the bridge's admin API, with its token.
pub fn ctl(bridge: &Bridge, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args([
            "ctl",
            "--admin",
            &format!("http://127.0.0.1:{}", bridge.admin_port),
        ])
        .args(["--token", TOKEN])
        .args(args)
        .output()
        .unwrap()
}

pub fn job(bridge: &Bridge, id: i64) -> serde_json::Value {
    let (code, body) = bridge.admin_get(&format!("/api/jobs/{id}"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until the job is in `state` (up to 40 s); the job.
pub fn wait_state(bridge: &Bridge, id: i64, state: &str) -> serde_json::Value {
    wait_state_within(bridge, id, state, Duration::from_secs(40))
}

/// Waits until the job is in `state` (up to `limit`); the job. A failed job fails the test.
pub fn wait_state_within(
    bridge: &Bridge,
    id: i64,
    state: &str,
    limit: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let j = job(bridge, id);
        if j["state"] == state {
            return j;
        }
        assert!(
            Instant::now() < deadline && j["state"] != "failed",
            "job {id} is {j}, not {state}\n{}",
            bridge.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the job has done at least `rows` rows (up to 60 s).
pub fn wait_rows_done(bridge: &Bridge, id: i64, rows: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = job(bridge, id);
        if j["progress"]["done"].as_i64().unwrap() >= rows {
            return;
        }
        assert!(
            Instant::now() < deadline && j["state"] == "running",
            "job {id} is {j}, not past {rows} rows\n{}",
            bridge.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The target equals the rule's image of the source, row for row.
pub fn assert_equal(db: &str) {
    let c = cluster();
    assert_equal_on(c.primary_port, c.secondary_port, db);
}

/// [`assert_equal`] for a primary and a secondary of their own.
pub fn assert_equal_on(primary_port: u16, secondary_port: u16, db: &str) {
    let expected = psql_on(primary_port, db, EXPECTED);
    let actual = psql_on(secondary_port, db, ACTUAL);
    assert!(expected.lines().count() > 100);
    if expected != actual {
        let e: std::collections::BTreeSet<&str> = expected.lines().collect();
        let a: std::collections::BTreeSet<&str> = actual.lines().collect();
        let missing: Vec<_> = e.difference(&a).take(5).collect();
        let extra: Vec<_> = a.difference(&e).take(5).collect();
        panic!(
            "the target differs ({} rows expected, {} there): missing {missing:?}, extra {extra:?}",
            e.len(),
            a.len()
        );
    }
}

/// A verify of the DXY table through the API, waited for, must find the two sides equal; the
/// job as it ended.
pub fn assert_verify_clean(bridge: &Bridge) -> serde_json::Value {
    let (code, answer) = post(
        bridge,
        "/api/verify",
        "{\"tables\":[\"derived_data_bars\"]}",
    );
    assert_eq!(code, 202, "{answer}");
    let done = wait_state_within(
        bridge,
        answer["job"].as_i64().unwrap(),
        "done",
        Duration::from_secs(120),
    );
    assert_eq!(
        done["result"]["clean"], true,
        "verify found differences: {done}"
    );
    done
}
