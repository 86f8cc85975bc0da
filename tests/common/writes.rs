//! The write switch driven as an operator drives it, shared by tests/writes_switch.rs and
//! tests/writes_fidelity.rs: the DXY tables in one database (the target in the primary's own
//! database: the rewritten statements run in the client's session), `PUT .../writes`, and the comparison of the
//! two tables once both mirrors are idle.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::dxy::*;
use super::jobs::*;
use super::*;

/// The target table's DDL alone (the secondary's script also creates `instruments`, which the
/// primary's has too).
pub fn target_ddl() -> &'static str {
    let end = SECONDARY_DDL.find(");").unwrap() + 2;
    &SECONDARY_DDL[..end]
}

/// Database `db` on the server at `port` with the legacy table (empty) and the target, and
/// pgbridge in front with both urls pointing at it.
pub fn one_database_on(port: u16, db: &str) -> Bridge {
    psql_on(port, db, PRIMARY_DDL);
    psql_on(port, db, "TRUNCATE derived_data_bars");
    psql_on(port, db, target_ddl());
    let url = format!("postgres://postgres@127.0.0.1:{port}/{db}");
    let (port, admin, config) = dxy_config(&url, &url, DXY_RULE, "");
    Bridge::start_with_config(port, admin, &config)
}

/// [`one_database_on`] the shared primary, in a fresh database.
pub fn one_database(hint: &str) -> (Bridge, String) {
    let db = fresh_db(hint);
    (one_database_on(cluster().primary_port, &db), db)
}

/// `PUT /api/tables/derived_data_bars/writes` with `body`: the status code and the answer.
pub fn put_writes(bridge: &Bridge, body: &str) -> (u16, serde_json::Value) {
    put_writes_at(bridge.admin_port, body)
}

pub fn put_writes_at(admin_port: u16, body: &str) -> (u16, serde_json::Value) {
    let (code, answer) = http(
        admin_port,
        "PUT",
        "/api/tables/derived_data_bars/writes",
        Some(TOKEN),
        Some(body),
    );
    let value = serde_json::from_str(&answer).unwrap_or(serde_json::Value::String(answer));
    (code, value)
}

/// Waits until the forward mirror applied everything journaled and the reverse mirror every
/// captured change; then the rule's image of the source must equal the target.
pub fn assert_images_equal(bridge: &Bridge, port: u16, db: &str) {
    wait_applied(bridge);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(bridge);
        if s["reverse"]["queued"] == 0 {
            let expected = psql_on(port, db, EXPECTED);
            let actual = psql_on(port, db, ACTUAL);
            if expected == actual {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "images differ:\n{expected}\n---\n{actual}"
            );
        }
        assert!(Instant::now() < deadline, "reverse mirror stuck: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sessions writing through `bridges`, one each, until the answer's flag is set: round by
/// round, session `n` runs the text `sql(n, round)` gives. Each task answers its rounds.
pub fn writers(
    bridges: &[&Bridge],
    db: &str,
    sql: fn(usize, usize) -> String,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Vec<tokio::task::JoinHandle<usize>>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let tasks = bridges
        .iter()
        .enumerate()
        .map(|(n, bridge)| {
            let conn = bridge.conn_str("postgres", "", db);
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = connect(&conn).await;
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    client.batch_execute(&sql(n, round)).await.unwrap();
                    round += 1;
                }
                round
            })
        })
        .collect();
    (stop, tasks)
}
