//! A transaction block that keeps one snapshot (REPEATABLE READ, SERIALIZABLE) reads on the
//! primary, whichever way it got its level (named by BEGIN or SET TRANSACTION, the session's
//! default by SET, SET SESSION CHARACTERISTICS, the startup packet, or the role's default on the
//! primary); a block of READ COMMITTED, and every statement outside a block, reads where the
//! flags say. A bar whose close only the secondary holds tells which side answered.

mod common;

use common::dxy::*;
use common::*;

/// The close of the bar that the secondary alone has as 777.
const READ: &str =
    "SELECT close::text FROM derived_data_bars WHERE symbol = 'DXY' AND ts = '2026-01-05 10:00+00'";

/// A DXY pair with two bars mirrored, reads flipped to the secondary, and the first bar's
/// close changed on the secondary only.
async fn planted(hint: &str) -> (Bridge, String) {
    let db = fresh_db(hint);
    let (bridge, db) = mirrored_with(
        cluster().primary_port,
        cluster().secondary_port,
        &db,
        DXY_RULE,
        "",
    );
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    client
        .batch_execute(&format!(
            "{INSERT} ('DXY', '2026-01-05 10:00+00', 1, 2, 0.5, 100, 10), \
                      ('DXY', '2026-01-05 10:01+00', 1, 2, 0.5, 101, 10)"
        ))
        .await
        .unwrap();
    wait_applied(&bridge);
    psql_on(
        cluster().secondary_port,
        &db,
        "UPDATE data_bars SET close_px = 777 WHERE ts = '2026-01-05 10:00+00'",
    );
    set_reads(&bridge, "secondary");
    (bridge, db)
}

/// Which side answered `READ` on `client`: true for the secondary. Through the simple protocol
/// (`simple`) or the extended one.
async fn secondary(client: &tokio_postgres::Client, simple: bool) -> bool {
    let close: String = if simple {
        let rows = client.simple_query(READ).await.unwrap();
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap()
    } else {
        client.query_one(READ, &[]).await.unwrap().get(0)
    };
    match close.as_str() {
        "777.000000" => true,
        "100.000000" => false,
        other => panic!("a close of {other}"),
    }
}

/// `before` (statements, each run alone), then `READ` in a transaction block opened by
/// `begin`: the side that answered, in both protocols.
async fn in_block(client: &tokio_postgres::Client, before: &[&str], begin: &str) -> [bool; 2] {
    for sql in before {
        client.batch_execute(sql).await.unwrap();
    }
    let mut sides = [false; 2];
    for (i, simple) in [true, false].into_iter().enumerate() {
        client.batch_execute(begin).await.unwrap();
        sides[i] = secondary(client, simple).await;
        client.batch_execute("COMMIT").await.unwrap();
    }
    sides
}

#[tokio::test]
async fn a_transaction_with_one_snapshot_reads_on_the_primary() {
    let (bridge, db) = planted("iso_named").await;
    let c = connect(&bridge.conn_str("postgres", "", &db)).await;
    assert!(secondary(&c, true).await && secondary(&c, false).await);
    let primary = [false, false];
    let secondary_side = [true, true];
    let cases: [(&[&str], &str, [bool; 2]); 9] = [
        (&[], "BEGIN", secondary_side),
        (&[], "BEGIN ISOLATION LEVEL REPEATABLE READ", primary),
        (
            &[],
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
            primary,
        ),
        (
            &[],
            "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            primary,
        ),
        (
            &[],
            "BEGIN; SET LOCAL transaction_isolation = 'repeatable read'",
            primary,
        ),
        (
            &["SET default_transaction_isolation = 'repeatable read'"],
            "BEGIN",
            primary,
        ),
        (&[], "BEGIN ISOLATION LEVEL READ COMMITTED", secondary_side),
        (
            &["RESET default_transaction_isolation"],
            "BEGIN",
            secondary_side,
        ),
        (
            &["SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
            "BEGIN",
            primary,
        ),
    ];
    for (before, begin, expected) in cases {
        assert_eq!(
            in_block(&c, before, begin).await,
            expected,
            "{before:?} then {begin}: which side answered (simple, extended)"
        );
    }
    // Outside a block each statement is its own snapshot: the secondary's, whatever the level.
    assert!(secondary(&c, true).await && secondary(&c, false).await);
    // A default set in a transaction that rolled back is not the session's.
    c.batch_execute("RESET default_transaction_isolation")
        .await
        .unwrap();
    c.batch_execute("BEGIN; SET default_transaction_isolation = serializable; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(in_block(&c, &[], "BEGIN").await, secondary_side);
}

#[tokio::test]
async fn a_repeatable_read_transaction_sees_one_snapshot_through_pgbridge() {
    let (bridge, db) = planted("iso_snapshot").await;
    let c = connect(&bridge.conn_str("postgres", "", &db)).await;
    let writer = connect(&bridge.conn_str("postgres", "", &db)).await;
    let count = "SELECT count(*) FROM derived_data_bars WHERE symbol = 'DXY'";
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let first: i64 = c.query_one(count, &[]).await.unwrap().get(0);
    writer
        .batch_execute(&format!(
            "{INSERT} ('DXY', '2026-01-05 10:02+00', 1, 2, 0.5, 102, 10)"
        ))
        .await
        .unwrap();
    wait_applied(&bridge);
    let second: i64 = c.query_one(count, &[]).await.unwrap().get(0);
    assert_eq!((first, second), (2, 2), "two snapshots in one transaction");
    c.batch_execute("COMMIT").await.unwrap();
    let after: i64 = c.query_one(count, &[]).await.unwrap().get(0);
    assert_eq!(after, 3);
}

#[tokio::test]
async fn the_startup_packet_and_the_roles_default_level_count() {
    let (bridge, db) = planted("iso_defaults").await;
    let options = format!(
        "{} options='-c default_transaction_isolation=serializable'",
        bridge.conn_str("postgres", "", &db)
    );
    let c = connect(&options).await;
    assert_eq!(in_block(&c, &[], "BEGIN").await, [false, false]);
    assert_eq!(
        in_block(&c, &[], "BEGIN ISOLATION LEVEL READ COMMITTED").await,
        [true, true]
    );

    // A role whose transactions are REPEATABLE READ by default, on the primary only.
    let role = format!("rr_{db}");
    psql_on(
        cluster().primary_port,
        &db,
        &format!(
            "CREATE ROLE {role} LOGIN; GRANT SELECT ON derived_data_bars, instruments TO {role}; \
             ALTER ROLE {role} IN DATABASE {db} SET default_transaction_isolation = 'repeatable read'"
        ),
    );
    let c = connect(&bridge.conn_str(&role, "", &db)).await;
    assert!(secondary(&c, true).await, "outside a block: the secondary");
    assert_eq!(in_block(&c, &[], "BEGIN").await, [false, false]);
    assert_eq!(
        in_block(&c, &[], "BEGIN ISOLATION LEVEL READ COMMITTED").await,
        [true, true]
    );
    assert_eq!(
        in_block(
            &c,
            &["SET default_transaction_isolation = 'read committed'"],
            "BEGIN"
        )
        .await,
        [true, true]
    );
}
