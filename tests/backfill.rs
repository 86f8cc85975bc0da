//! The backfill against real servers: rows written on the primary behind pgbridge's back are
//! copied to the target through the rule, race-free with a concurrent workload through
//! pgbridge, across a SIGKILL of pgbridge; a keyless rule is refused; a job can be cancelled.

mod common;

use std::time::{Duration, Instant};

use common::dxy::*;
use common::jobs::*;
use common::*;

const ROWS: usize = 20_000;

/// Writes through pgbridge until `stop`: updates and deletes of existing keys, inserts of new
/// ones, upserts, key-changing updates, a rolled-back transaction; returns how many rounds.
fn workload(bridge: &Bridge, db: &str, stop: impl Fn(u64) -> bool) -> u64 {
    let conn = bridge.conn_str("postgres", "", db);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut round: u64 = 0;
        let ts = |i: u64| format!("'2026-01-01 00:00:00+00'::timestamptz + {i} * interval '1 minute'");
        while !stop(round) {
            let i = (round * 7919) % ROWS as u64;
            let sql = format!(
                "UPDATE derived_data_bars SET close = close + 1, volume = volume + 1 WHERE symbol = 'DXY' AND ts = {a};\
                 DELETE FROM derived_data_bars WHERE symbol = 'DXY' AND ts = {b};\
                 INSERT INTO derived_data_bars VALUES ('DXY', {new}, 1, 2, 0.5, 1.5, {round});\
                 INSERT INTO derived_data_bars VALUES ('DXY', {c}, 3, 4, 2, 3.5, 7) ON CONFLICT (symbol, ts) DO UPDATE SET volume = EXCLUDED.volume + derived_data_bars.volume;\
                 UPDATE derived_data_bars SET ts = ts + interval '100 years' WHERE symbol = 'DXY' AND ts = {d};\
                 BEGIN; UPDATE derived_data_bars SET volume = -1 WHERE symbol = 'DXY' AND ts = {e}; DELETE FROM derived_data_bars WHERE symbol = 'DXY' AND ts = {f}; ROLLBACK;",
                a = ts(i),
                b = ts((i + 13) % ROWS as u64),
                new = ts(ROWS as u64 + 50 + round),
                c = ts((i + 101) % ROWS as u64),
                d = ts((i + 1009) % ROWS as u64),
                e = ts((i + 5) % ROWS as u64),
                f = ts((i + 6) % ROWS as u64),
            );
            client.batch_execute(&sql).await.unwrap();
            round += 1;
        }
        round
    })
}

#[test]
fn the_backfill_copies_the_rows_that_existed_race_free_with_the_mirror() {
    let (bridge, db) = with_unmirrored_rows("backfill_race", ROWS);
    let (code, answer) = start(
        &bridge,
        "derived_data_bars",
        "{\"chunk_rows\":1000,\"max_rows_per_sec\":8000}",
    );
    assert_eq!(code, 202, "{answer}");
    let id = answer["job"].as_i64().unwrap();
    let rounds = workload(&bridge, &db, |_| job(&bridge, id)["state"] != "running");
    assert!(
        rounds > 5,
        "the workload ran during the backfill ({rounds} rounds)"
    );
    let done = wait_state(&bridge, id, "done");
    assert_eq!(done["kind"], "backfill");
    assert!(
        done["progress"]["done"].as_i64().unwrap() >= ROWS as i64 - 200,
        "{done}"
    );
    workload(&bridge, &db, |r| r >= 3);
    wait_applied(&bridge);
    assert_equal(&db);
    let status = status(&bridge);
    let backfill = &status["tables"][0]["backfill"];
    assert_eq!(backfill["state"], "done", "{status}");
    assert!(metric(&bridge, "pgbridge_backfill_rows_total", "derived_data_bars") > 19_000.0);
    let (code, list) = bridge.admin_get("/api/jobs");
    assert_eq!(code, 200);
    assert!(list.contains(&format!("\"id\":{id}")), "{list}");
}

#[test]
fn a_backfill_resumes_after_a_sigkill_and_repeats_no_chunk() {
    let (mut bridge, db) = with_unmirrored_rows("backfill_kill", ROWS);
    let (code, answer) = start(
        &bridge,
        "derived_data_bars",
        "{\"chunk_rows\":500,\"max_rows_per_sec\":5000}",
    );
    assert_eq!(code, 202, "{answer}");
    let id = answer["job"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while job(&bridge, id)["progress"]["done"].as_i64().unwrap() < 3000 {
        assert!(Instant::now() < deadline, "{}", bridge.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    workload(&bridge, &db, |r| r >= 5);
    bridge.signal(9);
    bridge.wait_exit(Duration::from_secs(5));
    bridge.restart();
    let before = job(&bridge, id)["rows_done"].as_i64().unwrap();
    assert!(before >= 3000 && before < ROWS as i64, "{before}");
    workload(&bridge, &db, |r| r >= 5);
    let done = wait_state(&bridge, id, "done");
    // Every chunk counted once: the rows done are the rows there were, in chunks applied once.
    let rows_done = done["rows_done"].as_i64().unwrap();
    assert!(
        (ROWS as i64 - 100..=ROWS as i64 + 100).contains(&rows_done),
        "{done}"
    );
    let copied_here = metric(&bridge, "pgbridge_backfill_rows_total", "derived_data_bars");
    assert!(
        copied_here <= (ROWS as i64 - before + 500 + 100) as f64,
        "the restarted process copied {copied_here} rows after {before}"
    );
    wait_applied(&bridge);
    assert_equal(&db);
}

#[test]
fn a_rule_without_a_key_is_refused() {
    let db = fresh_db("backfill_keyless");
    let c = cluster();
    let rule = DXY_RULE
        .replace("key = [\"symbol\", \"ts\"]", "")
        .replace("mirror = \"rows\"", "mirror = \"statements\"");
    let (bridge, _db) = mirrored_with(c.primary_port, c.secondary_port, &db, &rule, "");
    let (code, answer) = start(&bridge, "derived_data_bars", "{}");
    assert_eq!(code, 409, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("has no key"), "{message}");
    let out = ctl(&bridge, &["backfill", "derived_data_bars"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no key"),
        "{out:?}"
    );
    let (code, answer) = start(&bridge, "nosuch", "{}");
    assert_eq!(code, 404, "{answer}");
    let path = "/api/tables/derived_data_bars/backfill";
    let (code, _) = http(bridge.admin_port, "POST", path, None, Some("{}"));
    assert_eq!(code, 401);
}

#[test]
fn a_cancelled_backfill_ends_cancelled_and_resumes_when_started_again() {
    let (bridge, db) = with_unmirrored_rows("backfill_cancel", 5000);
    let (code, answer) = start(
        &bridge,
        "derived_data_bars",
        "{\"chunk_rows\":200,\"max_rows_per_sec\":1000}",
    );
    assert_eq!(code, 202, "{answer}");
    let id = answer["job"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let path = format!("/api/jobs/{id}");
    let (code, body) = http(bridge.admin_port, "DELETE", &path, Some(TOKEN), None);
    assert_eq!(code, 200, "{body}");
    let cancelled = wait_state(&bridge, id, "cancelled");
    let done = cancelled["rows_done"].as_i64().unwrap();
    assert!(done > 0 && done < 5000, "{cancelled}");
    // `ctl backfill` resumes it and waits, with plain progress lines off a terminal.
    let out = ctl(
        &bridge,
        &["backfill", "derived_data_bars", "--chunk-rows", "2000"],
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("job {id} done")), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rows/s"),
        "{out:?}"
    );
    let out = ctl(&bridge, &["jobs", "--json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "the job resumed: {jobs}");
    let finished = wait_state(&bridge, id, "done");
    assert_eq!(finished["rows_done"].as_i64(), Some(5000), "{finished}");
    wait_applied(&bridge);
    let c = cluster();
    assert_eq!(
        psql_on(c.primary_port, &db, EXPECTED),
        psql_on(c.secondary_port, &db, ACTUAL)
    );
}

/// The race the design is for, made certain: a transaction whose COMMIT is slow on the primary
/// (a deferred trigger sleeps) is journaled before the chunk's snapshot but invisible to it, so
/// it is applied before the chunk; the chunk must leave its keys alone, or the deleted row comes
/// back and the updated one reverts.
#[test]
fn a_chunk_leaves_out_the_keys_of_a_transaction_its_snapshot_did_not_see() {
    let (bridge, db) = with_unmirrored_rows("backfill_unseen", 3000);
    let c = cluster();
    psql_on(
        c.primary_port,
        &db,
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.75); RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER slow AFTER UPDATE OR DELETE ON derived_data_bars \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
    );
    let writer = {
        let conn = bridge.conn_str("postgres", "", &db);
        std::thread::spawn(move || {
            let ts = |i: u32| {
                format!("'2026-01-01 00:00:00+00'::timestamptz + {i} * interval '1 minute'")
            };
            let script = format!(
                "BEGIN;\nUPDATE derived_data_bars SET volume = 424242 WHERE symbol = 'DXY' AND ts = {};\n\
                 DELETE FROM derived_data_bars WHERE symbol = 'DXY' AND ts = {};\nCOMMIT;\n",
                ts(10),
                ts(11)
            );
            psql_script(&conn, &script)
        })
    };
    // Its intent is journaled before its COMMIT goes to the primary, which then takes 1.5 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&bridge)["mirror"]["journal_seq"].as_u64() < Some(1) {
        assert!(Instant::now() < deadline, "{}", bridge.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, answer) = start(&bridge, "derived_data_bars", "{\"chunk_rows\":5000}");
    assert_eq!(code, 202, "{answer}");
    let id = answer["job"].as_i64().unwrap();
    let (out, rc) = writer.join().unwrap();
    assert_eq!(rc, 0, "{out}");
    wait_state(&bridge, id, "done");
    wait_applied(&bridge);
    psql_on(
        c.primary_port,
        &db,
        "DROP TRIGGER slow ON derived_data_bars",
    );
    assert_equal(&db);
    let count = |port, sql: &str| psql_on(port, &db, sql).trim().to_string();
    assert_eq!(
        count(c.secondary_port, "SELECT count(*) FROM data_bars"),
        "2999"
    );
    assert_eq!(
        count(
            c.secondary_port,
            "SELECT count(*) FROM data_bars WHERE volume = 424242"
        ),
        "1"
    );
}
