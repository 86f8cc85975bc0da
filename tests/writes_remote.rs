//! The write switch with the target on another server (src/capture/drive/lockstep.rs): the
//! statements on the switched table run on the secondary in step with the client's
//! transaction, a transaction that writes both servers commits in two phases or not at all,
//! and where the secondary cannot prepare transactions such a transaction is refused with
//! 0A000. What a user checks: the replies, the rows on both servers, no prepared transaction
//! left behind.

mod common;

use std::time::{Duration, Instant};

use common::dxy::*;
use common::jobs::*;
use common::writes::put_writes;
use common::*;
use pgbridge::pgcluster::{PgOptions, PgServer};

const ORDERS: &str = "CREATE TABLE orders (id int PRIMARY KEY, note text)";

/// The primary's table no rule migrates, on the primary.
fn orders(port: u16, db: &str) -> String {
    psql_on(
        port,
        db,
        "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM orders",
    )
    .trim()
    .to_string()
}

/// The target's DXY rows by minute of 2026-03-01, on the secondary.
fn target_minutes(port: u16, db: &str) -> String {
    psql_on(
        port,
        db,
        "SELECT coalesce(string_agg(extract(minute FROM ts)::text, ',' ORDER BY ts), '') \
         FROM data_bars WHERE ts >= '2026-03-01' AND ts < '2026-03-02'",
    )
    .trim()
    .to_string()
}

fn prepared_left(port: u16, db: &str) -> String {
    psql_on(
        port,
        db,
        "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
    )
    .trim()
    .to_string()
}

fn dxy(minute: u32) -> String {
    format!("{INSERT} ('DXY', '2026-03-01 00:{minute:02}:00+00', 1, 2, 0.5, 1.5, {minute})")
}

/// The error's SQLSTATE of a failed statement.
fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("{e}"))
}

/// pgbridge over the primary and `secondary_port`, orders on the primary, the table backfilled
/// and verified: ready for its writes to move.
fn ready(secondary_port: u16, hint: &str) -> (Bridge, String) {
    let primary_port = cluster().primary_port;
    let db = fresh_db(hint);
    if secondary_port != cluster().secondary_port {
        psql_on(secondary_port, "postgres", &format!("CREATE DATABASE {db}"));
    }
    let (bridge, db) = mirrored_with(primary_port, secondary_port, &db, DXY_RULE, "");
    psql_on(primary_port, &db, ORDERS);
    backfilled(&bridge);
    assert_verify_clean(&bridge);
    (bridge, db)
}

/// A client of `bridge`, after it wrote the table and orders in one transaction while the
/// writes were mirrored (the gate counts it).
async fn mixed_while_mirroring(bridge: &Bridge, db: &str) -> tokio_postgres::Client {
    let client = connect(&bridge.conn_str("postgres", "", db)).await;
    client
        .batch_execute(&format!(
            "BEGIN; {}; INSERT INTO orders VALUES (0, 'm'); COMMIT",
            dxy(0)
        ))
        .await
        .unwrap();
    assert_eq!(status(bridge)["tables"][0]["mixed_transactions"], 1);
    client
}

fn force_switch(bridge: &Bridge) -> serde_json::Value {
    let (code, answer) = put_writes(
        bridge,
        r#"{"target":"secondary","reason":"two servers","force":true}"#,
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["writes"], "secondary");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_both_servers_commits_on_both_or_on_neither() {
    let c = cluster();
    let (bridge, db) = ready(c.secondary_port, "remote_2pc");
    let (p, s) = (c.primary_port, c.secondary_port);
    let client = mixed_while_mirroring(&bridge, &db).await;
    // Without --force the gate names what an operator must know of two servers.
    let (code, refused) = put_writes(&bridge, r#"{"target":"secondary"}"#);
    assert_eq!(code, 409, "{refused}");
    assert!(
        refused.to_string().contains("extended protocol"),
        "{refused}"
    );
    let answer = force_switch(&bridge);
    assert!(
        answer["overridden"].to_string().contains("another server"),
        "{answer}"
    );

    // Outside a block: a write of its own there, the primary's tag.
    let tags = client.simple_query(&dxy(1)).await.unwrap();
    assert!(matches!(
        &tags[0],
        tokio_postgres::SimpleQueryMessage::CommandComplete(1)
    ));
    assert_eq!(target_minutes(s, &db), "0,1");

    // Both servers in one block: committed on both, nothing left prepared.
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute(&dxy(2)).await.unwrap();
    client
        .batch_execute("INSERT INTO orders VALUES (2, 'both')")
        .await
        .unwrap();
    // The block reads its own write on the secondary.
    let seen = client
        .simple_query("SELECT count(*) FROM derived_data_bars WHERE ts >= '2026-03-01'")
        .await
        .unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(row) = &seen[1] else {
        panic!("{seen:?}")
    };
    assert_eq!(row.get(0), Some("3"));
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(target_minutes(s, &db), "0,1,2");
    assert_eq!(orders(p, &db), "0,2");
    assert_eq!(prepared_left(s, &db), "0");
    assert!(metric(&bridge, "pgbridge_two_phase_total", "outcome=\"committed\"") >= 1.0);

    // Rolled back: neither side keeps anything.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("INSERT INTO orders VALUES (3, 'no')")
        .await
        .unwrap();
    client.batch_execute(&dxy(3)).await.unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(target_minutes(s, &db), "0,1,2");
    assert_eq!(orders(p, &db), "0,2");

    // A statement failing on the secondary fails the client's block on both sides.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("INSERT INTO orders VALUES (4, 'no')")
        .await
        .unwrap();
    let e = client.batch_execute(&dxy(2)).await.unwrap_err();
    assert_eq!(sqlstate(&e), "23505", "{e:?}");
    let e = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02", "{e:?}");
    let end = client.simple_query("COMMIT").await.unwrap();
    assert!(
        matches!(
            &end[0],
            tokio_postgres::SimpleQueryMessage::CommandComplete(0)
        ),
        "{end:?}"
    );
    assert_eq!(orders(p, &db), "0,2");

    // Savepoints: rolled back to on both sides.
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("SAVEPOINT a").await.unwrap();
    client.batch_execute(&dxy(5)).await.unwrap();
    client
        .batch_execute("INSERT INTO orders VALUES (5, 'no')")
        .await
        .unwrap();
    client.batch_execute("ROLLBACK TO a").await.unwrap();
    client.batch_execute(&dxy(6)).await.unwrap();
    client
        .batch_execute("INSERT INTO orders VALUES (6, 'yes')")
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(target_minutes(s, &db), "0,1,2,6");
    assert_eq!(orders(p, &db), "0,2,6");

    // One statement over both servers, and a prepared statement on the table: refused.
    let e = client
        .batch_execute("INSERT INTO orders SELECT 100 + count(*)::int, 'x' FROM derived_data_bars")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    let e = client
        .execute(
            "UPDATE derived_data_bars SET volume = $1 WHERE symbol = 'DXY'",
            &[&0i64],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    assert!(format!("{e:?}").contains("extended protocol"), "{e:?}");
    // The session goes on.
    client.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(orders(p, &db), "0,2,6");

    // The reverse mirror brings the target's rows back to the legacy table.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let expected = psql_on(p, &db, EXPECTED);
        let actual = psql_on(s, &db, ACTUAL);
        if expected == actual {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "images differ:\n{expected}\n---\n{actual}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(prepared_left(s, &db), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_its_session_left_prepared_follows_the_primarys_outcome() {
    let c = cluster();
    let (bridge, db) = ready(c.secondary_port, "remote_orphans");
    force_switch(&bridge);
    let (p, s) = (c.primary_port, c.secondary_port);
    // Two primary transactions: one committed, one rolled back (a pgbridge killed between
    // the secondary's PREPARE and the settling leaves such parts).
    let committed = psql_on(
        p,
        &db,
        "BEGIN; INSERT INTO orders VALUES (10, 'c'); SELECT pg_current_xact_id(); COMMIT;",
    );
    let aborted = psql_on(
        p,
        &db,
        "BEGIN; INSERT INTO orders VALUES (11, 'a'); SELECT pg_current_xact_id(); ROLLBACK;",
    );
    let xid = |out: &str| {
        out.lines()
            .find(|l| l.trim().parse::<i64>().is_ok())
            .unwrap()
            .trim()
            .to_string()
    };
    for (xid, minute) in [(xid(&committed), 20), (xid(&aborted), 21)] {
        psql_on(
            s,
            &db,
            &format!(
                "BEGIN; INSERT INTO data_bars (symbol, timeframe, ts, open, high, low, close_px, volume, is_synthetic) \
                 VALUES ('DXY.IDX', '1m', '2026-03-01 00:{minute}:00+00', 1, 1, 1, 1, 1, true); \
                 PREPARE TRANSACTION 'pgbridge:{xid}:0';"
            ),
        );
    }
    assert_eq!(prepared_left(s, &db), "2");
    let deadline = Instant::now() + Duration::from_secs(30);
    while prepared_left(s, &db) != "0" {
        assert!(
            Instant::now() < deadline,
            "still prepared:\n{}",
            bridge.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(target_minutes(s, &db), "20");
    assert!(metric(&bridge, "pgbridge_two_phase_total", "by=\"recovery\"") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_prepared_transactions_a_transaction_over_both_servers_is_refused() {
    let secondary = PgServer::start(&PgOptions {
        settings: vec![("max_prepared_transactions".into(), "0".into())],
        ..PgOptions::default()
    })
    .unwrap_or_else(|e| panic!("cannot start PostgreSQL for the tests: {e}"));
    let s = secondary.port();
    let p = cluster().primary_port;
    let (bridge, db) = ready(s, "remote_no2pc");
    let client = mixed_while_mirroring(&bridge, &db).await;
    let (code_, refused) = put_writes(&bridge, r#"{"target":"secondary"}"#);
    assert_eq!(code_, 409, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("max_prepared_transactions is 0"),
        "{refused}"
    );
    force_switch(&bridge);

    // Either order: the statement that would make the block span both servers is refused.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("INSERT INTO orders VALUES (1, 'no')")
        .await
        .unwrap();
    let e = client.batch_execute(&dxy(1)).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    assert!(
        format!("{e:?}").contains("max_prepared_transactions"),
        "{e:?}"
    );
    client.batch_execute("ROLLBACK").await.unwrap();

    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute(&dxy(2)).await.unwrap();
    let e = client
        .batch_execute("INSERT INTO orders VALUES (2, 'no')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(target_minutes(s, &db), "0");
    assert_eq!(orders(p, &db), "0");

    // A block on the secondary's table alone commits there.
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute(&dxy(3)).await.unwrap();
    client.batch_execute(&dxy(4)).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(target_minutes(s, &db), "0,3,4");
    drop(secondary);
}
