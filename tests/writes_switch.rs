//! The write switch (src/writes/): a table's writes moved to the secondary and back, with the
//! target in the primary's own database, through pgbridge with real clients. What a user
//! checks: the replies the clients got (rows, tags, SQLSTATEs), the rows of both tables, and
//! that the switch waits for open transactions and aborts cleanly past its timeout.

mod common;

use std::time::{Duration, Instant};

use common::dxy::*;
use common::jobs::*;
use common::writes::*;
use common::*;

fn assert_images_equal(bridge: &Bridge, db: &str) {
    common::writes::assert_images_equal(bridge, cluster().primary_port, db);
}

/// Backfilled and verified: the gate's evidence for a switch.
fn ready_to_switch(bridge: &Bridge) {
    backfilled(bridge);
    assert_verify_clean(bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_move_to_the_target_and_back_and_the_clients_see_what_the_primary_would_say() {
    let (bridge, db) = one_database("writes_move");
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    for i in 0..150 {
        client
            .batch_execute(&format!(
                "{INSERT} ('DXY', '2026-01-01'::timestamptz + {i} * interval '1 minute', 1, 2, 0.5, {i}, {i})"
            ))
            .await
            .unwrap();
    }
    // A statement prepared while writes are on the primary, executed after each switch.
    let prepared = client
        .prepare("INSERT INTO derived_data_bars (symbol, ts, open, high, low, close) VALUES ('DXY', $1::text::timestamptz, 1, 1, 1, $2::text::numeric) RETURNING close::text AS close, volume")
        .await
        .unwrap();
    ready_to_switch(&bridge);

    let (code, switched) = put_writes(&bridge, r#"{"target":"secondary","reason":"day 1"}"#);
    assert_eq!(code, 200, "{switched}");
    assert_eq!(switched["changed"], true);
    assert_eq!(switched["writes"], "secondary");
    assert_eq!(status(&bridge)["tables"][0]["writes"], "secondary");

    // RETURNING in the source's names and types; the target's default for an omitted column.
    let rows = client
        .query(&prepared, &[&"2026-02-01 00:00:00+00", &"7.25"])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>("volume"), 0);
    assert_eq!(rows[0].get::<_, String>("close"), "7.250000");
    let tags = client
        .simple_query(
            "INSERT INTO derived_data_bars VALUES ('DXY', '2026-02-02', 1, 1, 1, 1, 1) \
               ON CONFLICT (symbol, ts) DO UPDATE SET close = EXCLUDED.close; \
             INSERT INTO derived_data_bars VALUES ('DXY', '2026-02-02', 1, 1, 1, 9, 1) \
               ON CONFLICT (symbol, ts) DO UPDATE SET close = EXCLUDED.close; \
             INSERT INTO derived_data_bars VALUES ('DXY', '2026-02-02', 1, 1, 1, 5, 5) ON CONFLICT DO NOTHING; \
             UPDATE derived_data_bars SET ts = ts + interval '1 year', volume = volume + 1 \
               WHERE symbol = 'DXY' AND ts < '2026-01-01 00:10'; \
             DELETE FROM derived_data_bars WHERE symbol = 'DXY' AND ts >= '2026-01-01 02:00' AND ts < '2026-01-02'",
        )
        .await
        .unwrap();
    let counts: Vec<u64> = tags
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(counts, vec![1, 1, 0, 10, 30]);

    // A savepoint rolled back takes its write with it; the transaction's own read sees the rest.
    client
        .batch_execute(
            "BEGIN; \
             INSERT INTO derived_data_bars VALUES ('DXY', '2026-03-01', 1, 1, 1, 1, 1); \
             SAVEPOINT s; \
             INSERT INTO derived_data_bars VALUES ('DXY', '2026-03-02', 1, 1, 1, 1, 1); \
             ROLLBACK TO s;",
        )
        .await
        .unwrap();
    let seen: i64 = client
        .query_one(
            "SELECT count(*) FROM derived_data_bars WHERE symbol = 'DXY' AND ts >= '2026-03-01' AND ts < '2026-04-01'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 1);
    client.batch_execute("COMMIT").await.unwrap();

    // What the write view cannot do as the table would fails with its SQLSTATE, and the
    // transaction is aborted as PostgreSQL would abort it.
    let err = client
        .batch_execute("TRUNCATE derived_data_bars")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000", "{err:?}");
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("TRUNCATE of derived_data_bars"),
        "{message}"
    );
    // Prepared, with parameters: its Execute fails the same way.
    let err = client
        .execute(
            "INSERT INTO derived_data_bars VALUES ('DXY', $1::text::timestamptz, 1, 1, 1, 1, 1) \
             ON CONFLICT (ts) DO NOTHING",
            &[&"2026-10-01 00:00:00+00"],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000", "{err:?}");
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(message.contains("must name its key"), "{message}");
    // A repair or backfill would overwrite the authority from the legacy table: refused.
    let (code, answer) = start(&bridge, "derived_data_bars", "{}");
    assert_eq!(code, 409, "{answer}");
    assert!(answer.to_string().contains("authority"), "{answer}");
    // A row outside the rule's where stays the legacy table's (src/sql/write_rest.rs).
    client
        .batch_execute("INSERT INTO derived_data_bars VALUES ('ABC', '2026-03-01', 1, 1, 1, 1, 1)")
        .await
        .unwrap();
    let port = cluster().primary_port;
    assert_eq!(
        psql_on(
            port,
            &db,
            "SELECT count(*) FROM derived_data_bars WHERE symbol = 'ABC'"
        ),
        "1\n"
    );
    let err = client
        .batch_execute("INSERT INTO derived_data_bars VALUES ('DXY', '2026-03-01', 1, 1, 1, 1, 1)")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23505", "{err:?}");

    // The legacy table follows through the reverse mirror.
    assert_images_equal(&bridge, &db);
    assert_eq!(
        psql_on(
            port,
            &db,
            "SELECT close FROM derived_data_bars WHERE ts = '2026-02-02'"
        ),
        "9.000000\n",
        "{}",
        psql_on(
            port,
            &db,
            "SELECT ts, close FROM derived_data_bars WHERE ts > '2026-01-02'"
        )
    );

    // The way back: writes return to the legacy table and are mirrored forward again, the
    // statement prepared before both switches included.
    let (code, back) = put_writes(&bridge, r#"{"target":"primary","reason":"rollback drill"}"#);
    assert_eq!(code, 200, "{back}");
    assert_eq!(back["previous"], "secondary");
    client
        .query(&prepared, &[&"2026-04-01 00:00:00+00", &"3.5"])
        .await
        .unwrap();
    client
        .batch_execute(
            "UPDATE derived_data_bars SET close = 42 WHERE symbol = 'DXY' AND ts = '2026-02-02'",
        )
        .await
        .unwrap();
    assert_images_equal(&bridge, &db);
    assert_eq!(
        psql_on(
            port,
            &db,
            "SELECT close_px FROM data_bars WHERE ts = '2026-04-01'"
        ),
        "3.500000\n"
    );
    assert_verify_clean(&bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_the_switched_table_and_another_commits_or_rolls_back_whole() {
    let (bridge, db) = one_database("writes_atomic");
    let (code, answer) = put_writes(&bridge, r#"{"target":"secondary","force":true}"#);
    assert_eq!(code, 200, "{answer}");
    assert!(
        answer["overridden"].as_array().unwrap().len() >= 2,
        "{answer}"
    );
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    for end in ["ROLLBACK", "COMMIT"] {
        client
            .batch_execute(&format!(
                "BEGIN; \
                 INSERT INTO derived_data_bars VALUES ('DXY', '2026-05-01', 1, 1, 1, 1, 1); \
                 INSERT INTO instruments VALUES ('NEW', 'a new instrument'); {end}"
            ))
            .await
            .unwrap();
    }
    let port = cluster().primary_port;
    assert_eq!(psql_on(port, &db, "SELECT count(*) FROM data_bars"), "1\n");
    assert_eq!(
        psql_on(
            port,
            &db,
            "SELECT count(*) FROM instruments WHERE symbol = 'NEW'"
        ),
        "1\n"
    );
    assert_images_equal(&bridge, &db);
    let audit = std::fs::read_to_string(audit_log(&bridge)).unwrap();
    let line: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(line["kind"], "writes");
    assert_eq!(line["to"], "secondary");
    assert_eq!(line["forced"], true);
    assert_eq!(line["evidence"]["same_database"], true);
}

/// The audit log of a bridge (`[admin] audit_log`, by default beside its config).
fn audit_log(bridge: &Bridge) -> std::path::PathBuf {
    bridge.dir.path().join("pgbridge-audit.jsonl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_waits_for_open_transactions_and_aborts_past_its_timeout() {
    let (bridge, db) = one_database("writes_abort");
    let open = connect(&bridge.conn_str("postgres", "", &db)).await;
    open.batch_execute(
        "BEGIN; INSERT INTO derived_data_bars VALUES ('DXY', '2026-06-01', 1, 1, 1, 1, 1)",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let (code, answer) = put_writes(
        &bridge,
        r#"{"target":"secondary","force":true,"timeout_ms":800}"#,
    );
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer.to_string().contains("still in transactions"),
        "{answer}"
    );
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(status(&bridge)["tables"][0]["writes"], "primary");
    // Released: the open transaction goes on and commits on the primary, mirrored forward.
    open.batch_execute(
        "INSERT INTO derived_data_bars VALUES ('DXY', '2026-06-02', 1, 1, 1, 1, 1); COMMIT",
    )
    .await
    .unwrap();
    wait_applied(&bridge);
    assert_eq!(
        psql_on(
            cluster().primary_port,
            &db,
            "SELECT count(*) FROM data_bars"
        ),
        "2\n"
    );

    // A write that arrives while the switch waits is held, then runs on the side the switch
    // left the table on: the secondary.
    open.batch_execute(
        "BEGIN; INSERT INTO derived_data_bars VALUES ('DXY', '2026-06-03', 1, 1, 1, 1, 1)",
    )
    .await
    .unwrap();
    let switch = {
        let admin = bridge.admin_port;
        std::thread::spawn(move || {
            http(
                admin,
                "PUT",
                "/api/tables/derived_data_bars/writes",
                Some(TOKEN),
                Some(r#"{"target":"secondary","force":true,"timeout_ms":10000}"#),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = connect(&bridge.conn_str("postgres", "", &db)).await;
    let held = tokio::spawn(async move {
        let t = Instant::now();
        other
            .batch_execute(
                "INSERT INTO derived_data_bars VALUES ('DXY', '2026-06-04', 1, 1, 1, 1, 1)",
            )
            .await
            .unwrap();
        t.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held.is_finished(),
        "a write during the switch was not held"
    );
    open.batch_execute("COMMIT").await.unwrap();
    let (code, answer) = switch.join().unwrap();
    assert_eq!(code, 200, "{answer}");
    let paused = held.await.unwrap();
    assert!(paused >= Duration::from_millis(250), "{paused:?}");
    assert_images_equal(&bridge, &db);
    assert_eq!(
        psql_on(
            cluster().primary_port,
            &db,
            "SELECT count(*) FROM data_bars"
        ),
        "4\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_two_servers_the_gate_names_what_changes_and_counts_the_mixed_transactions() {
    let (bridge, db) = with_unmirrored_rows("writes_two_servers", 10);
    // Observed while mirroring: a transaction over the migrated table and another, in the
    // simple protocol and in the extended one, and one over the migrated table alone.
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    client
        .batch_execute(
            "BEGIN; INSERT INTO derived_data_bars VALUES ('DXY', '2027-01-01', 1, 1, 1, 1, 1); \
             INSERT INTO instruments VALUES ('X1', 'x'); COMMIT",
        )
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute("INSERT INTO instruments VALUES ($1, 'x')", &[&"X2"])
        .await
        .unwrap();
    client
        .execute(
            "UPDATE derived_data_bars SET close = $1::int8 WHERE symbol = 'DXY' AND ts = '2027-01-01'",
            &[&2i64],
        )
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    client
        .batch_execute(
            "UPDATE derived_data_bars SET close = 3 WHERE symbol = 'DXY' AND ts = '2027-01-01'",
        )
        .await
        .unwrap();
    assert_eq!(status(&bridge)["tables"][0]["mixed_transactions"], 2);
    // Without --force: the gate names the extended protocol's refusal on another server (the
    // secondary prepares transactions, so the mixed ones would commit in two phases:
    // tests/writes_remote.rs).
    let (code, answer) = put_writes(&bridge, r#"{"target":"secondary"}"#);
    assert_eq!(code, 409, "{answer}");
    let message = answer.to_string();
    assert!(message.contains("another server"), "{answer}");
    assert!(message.contains("prepared writes"), "{answer}");
    assert!(!message.contains("max_prepared_transactions"), "{answer}");
    assert_eq!(status(&bridge)["tables"][0]["writes"], "primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pgbridge_comes_back_with_the_writes_where_they_were() {
    let (mut bridge, db) = one_database("writes_kill");
    let (code, answer) = put_writes(&bridge, r#"{"target":"secondary","force":true}"#);
    assert_eq!(code, 200, "{answer}");
    {
        let client = connect(&bridge.conn_str("postgres", "", &db)).await;
        client
            .batch_execute("INSERT INTO derived_data_bars SELECT 'DXY', '2026-07-01'::timestamptz + i * interval '1 minute', 1, 1, 1, i, i FROM generate_series(1, 500) i")
            .await
            .unwrap();
    }
    bridge.signal(9);
    bridge.wait_exit(Duration::from_secs(5));
    bridge.restart();
    assert_eq!(status(&bridge)["tables"][0]["writes"], "secondary");
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    client
        .batch_execute("UPDATE derived_data_bars SET close = close + 1 WHERE symbol = 'DXY'")
        .await
        .unwrap();
    assert_images_equal(&bridge, &db);
    let port = cluster().primary_port;
    assert_eq!(
        psql_on(port, &db, "SELECT sum(close) FROM derived_data_bars"),
        "125750.000000\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_moves_the_writes_and_complete_retires_the_legacy_table_for_good() {
    let (bridge, db) = one_database("writes_ctl");
    // The gate names what is missing, and ctl exits 1 with it.
    let refused = ctl(&bridge, &["writes", "derived_data_bars", "secondary"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("no backfill ran") && stderr.contains("no verify ran"),
        "{stderr}"
    );
    let forced = ctl(
        &bridge,
        &[
            "--json",
            "writes",
            "derived_data_bars",
            "secondary",
            "--force",
            "--reason",
            "drill",
        ],
    );
    assert_eq!(
        forced.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&forced.stdout).unwrap();
    assert_eq!(answer["writes"], "secondary");
    assert_eq!(answer["reason"], "drill");
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    client
        .batch_execute("INSERT INTO derived_data_bars VALUES ('DXY', '2026-08-01', 1, 1, 1, 1, 1)")
        .await
        .unwrap();
    assert_images_equal(&bridge, &db);

    let done = ctl(&bridge, &["writes", "derived_data_bars", "complete"]);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("migration complete"));
    // Writes stay on the target; the legacy table no longer follows.
    client
        .batch_execute("INSERT INTO derived_data_bars VALUES ('DXY', '2026-08-02', 1, 1, 1, 1, 1)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let port = cluster().primary_port;
    assert_eq!(psql_on(port, &db, "SELECT count(*) FROM data_bars"), "2\n");
    assert_eq!(
        psql_on(port, &db, "SELECT count(*) FROM derived_data_bars"),
        "1\n"
    );
    let back = ctl(
        &bridge,
        &["writes", "derived_data_bars", "primary", "--force"],
    );
    assert_eq!(back.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&back.stderr).contains("migration is complete"));
    assert_eq!(status(&bridge)["tables"][0]["writes"], "complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_outside_the_rules_where_stay_in_the_legacy_table_and_are_still_the_tables() {
    let (bridge, db) = one_database("writes_rest");
    let port = cluster().primary_port;
    psql_on(
        port,
        &db,
        "INSERT INTO derived_data_bars VALUES ('ABC', '2026-01-01', 1, 1, 1, 1, 1), \
         ('ABC', '2026-01-02', 1, 1, 1, 2, 2)",
    );
    let (code, answer) = put_writes(&bridge, r#"{"target":"secondary","force":true}"#);
    assert_eq!(code, 200, "{answer}");
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    let tags = client
        .simple_query(
            "INSERT INTO derived_data_bars VALUES ('DXY', '2026-01-03', 1, 1, 1, 3, 3); \
             INSERT INTO derived_data_bars VALUES ('ABC', '2026-01-04', 1, 1, 1, 4, 4) \
               ON CONFLICT (symbol, ts) DO UPDATE SET close = EXCLUDED.close; \
             INSERT INTO derived_data_bars VALUES ('ABC', '2026-01-04', 1, 1, 1, 40, 4) \
               ON CONFLICT (symbol, ts) DO UPDATE SET close = EXCLUDED.close; \
             UPDATE derived_data_bars SET volume = volume * 10 WHERE ts <= '2026-01-03'; \
             UPDATE derived_data_bars SET symbol = 'DXY' WHERE symbol = 'ABC' AND ts = '2026-01-02'; \
             DELETE FROM derived_data_bars WHERE symbol = 'ABC' AND ts = '2026-01-01'",
        )
        .await
        .unwrap();
    let counts: Vec<u64> = tags
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(counts, vec![1, 1, 1, 3, 1, 1]);
    // Through pgbridge the table holds all of its rows, whichever side keeps them.
    let rows = client
        .query(
            "SELECT symbol, ts::text, close::text, volume FROM derived_data_bars ORDER BY ts",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, String>(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("DXY".into(), "2.000000".into(), 20),
            ("DXY".into(), "3.000000".into(), 30),
            ("ABC".into(), "40.000000".into(), 4),
        ]
    );
    // The ABC row stays in the legacy table; the DXY rows are the target's, mirrored back.
    assert_images_equal(&bridge, &db);
    assert_eq!(
        psql_on(
            port,
            &db,
            "SELECT symbol, close, volume FROM derived_data_bars ORDER BY ts"
        ),
        "DXY|2.000000|20\nDXY|3.000000|30\nABC|40.000000|4\n"
    );
    assert_eq!(psql_on(port, &db, "SELECT count(*) FROM data_bars"), "2\n");
    let (code, answer) = put_writes(&bridge, r#"{"target":"primary"}"#);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        psql_on(
            port,
            &db,
            "SELECT count(*) FROM derived_data_bars WHERE symbol = 'ABC'"
        ),
        "1\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_role_writes_what_it_could_write_in_the_legacy_table() {
    let (bridge, db) = one_database("writes_role");
    let port = cluster().primary_port;
    let (app, reader) = (format!("app_{db}"), format!("reader_{db}"));
    psql_on(
        port,
        &db,
        &format!(
            "CREATE ROLE {app} LOGIN; CREATE ROLE {reader} LOGIN; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON derived_data_bars TO {app}; \
             GRANT SELECT ON derived_data_bars TO {reader}"
        ),
    );
    let (code, answer) = put_writes(&bridge, r#"{"target":"secondary","force":true}"#);
    assert_eq!(code, 200, "{answer}");
    // No privilege on data_bars, none on pgbridge's schemas: the legacy table's are enough.
    let client = connect(&bridge.conn_str(&app, "", &db)).await;
    let rows = client
        .query(
            "INSERT INTO derived_data_bars VALUES ('DXY', '2026-09-01', 1, 1, 1, 1, 1) RETURNING volume",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1);
    client
        .batch_execute(
            "UPDATE derived_data_bars SET close = 5 WHERE symbol = 'DXY'; \
             INSERT INTO derived_data_bars VALUES ('DXY', '2026-09-02', 1, 1, 1, 1, 1) \
               ON CONFLICT (symbol, ts) DO UPDATE SET close = EXCLUDED.close; \
             DELETE FROM derived_data_bars WHERE ts = '2026-09-02'",
        )
        .await
        .unwrap();
    assert_images_equal(&bridge, &db);
    assert_eq!(
        psql_on(port, &db, "SELECT close_px FROM data_bars"),
        "5.000000\n"
    );
    // A role that may only read the legacy table may only read through the view.
    let client = connect(&bridge.conn_str(&reader, "", &db)).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM derived_data_bars", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let err = client
        .batch_execute("DELETE FROM derived_data_bars")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501", "{err:?}");
}
