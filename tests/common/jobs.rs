//! Jobs (backfill, verify, repair) driven as an operator drives them: the admin API and
//! `pgbridge ctl`, against a DXY pair whose primary holds rows the mirror never saw.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::dxy::*;
use super::*;

/// The rule's image of the source, as the target should hold it.
pub const EXPECTED: &str = "SELECT 'DXY.IDX', '1m', ts, open, high, low, close, volume, 't' \
    FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts";
pub const ACTUAL: &str =
    "SELECT symbol, timeframe, ts, open, high, low, close_px, volume, is_synthetic \
    FROM data_bars ORDER BY ts";

/// pgbridge in front of a fresh DXY pair (with `extra` config lines), and `n` DXY rows (and some
/// ABC rows, outside the rule) written straight to the primary, which the mirror never sees.
pub fn with_unmirrored_rows_and(hint: &str, n: usize, extra: &str) -> (Bridge, String) {
    with_unmirrored_rows_rule(hint, n, DXY_RULE, extra)
}

/// [`with_unmirrored_rows_and`] with rule file text `rule`.
pub fn with_unmirrored_rows_rule(
    hint: &str,
    n: usize,
    rule: &str,
    extra: &str,
) -> (Bridge, String) {
    let db = fresh_db(hint);
    let c = cluster();
    let (bridge, db) = mirrored_with(c.primary_port, c.secondary_port, &db, rule, extra);
    psql_on(
        c.primary_port,
        &db,
        &format!(
            "INSERT INTO derived_data_bars (symbol, ts, open, high, low, close, volume) \
             SELECT s, '2026-01-01 00:00:00+00'::timestamptz + i * interval '1 minute', \
             100 + i % 7, 101 + i % 5, 99, 100.5 + (i % 11) / 8.0, i \
             FROM generate_series(0, {}) AS i, (VALUES ('DXY'), ('ABC')) AS v(s) \
             WHERE s = 'DXY' OR i % 100 = 0",
            n - 1
        ),
    );
    (bridge, db)
}

/// `POST path` with the token: the status and the JSON answer.
pub fn post(bridge: &Bridge, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (code, answer) = http(bridge.admin_port, "POST", path, Some(TOKEN), Some(body));
    let value = serde_json::from_str(&answer).unwrap_or(serde_json::Value::Null);
    (code, value)
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

/// Waits until the job is in `state` (up to 60 s); the job.
pub fn wait_job(bridge: &Bridge, id: i64, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
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

/// A backfill of the DXY table through the API, waited for.
pub fn backfilled(bridge: &Bridge) -> serde_json::Value {
    let (code, answer) = post(bridge, "/api/tables/derived_data_bars/backfill", "{}");
    assert_eq!(code, 202, "{answer}");
    wait_job(bridge, answer["job"].as_i64().unwrap(), "done")
}

/// The target equals the rule's image of the source, row for row.
pub fn assert_target_equal(db: &str) {
    let c = cluster();
    let expected = psql_on(c.primary_port, db, EXPECTED);
    let actual = psql_on(c.secondary_port, db, ACTUAL);
    if expected != actual {
        let e: std::collections::BTreeSet<&str> = expected.lines().collect();
        let a: std::collections::BTreeSet<&str> = actual.lines().collect();
        let missing: Vec<_> = e.difference(&a).take(5).collect();
        let extra: Vec<_> = a.difference(&e).take(5).collect();
        panic!("the target differs: missing {missing:?}, extra {extra:?}");
    }
}
