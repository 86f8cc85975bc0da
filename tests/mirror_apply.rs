//! The applier against a real secondary with the DXY schema: journal transactions captured from
//! a real primary reach `data_bars` as the rule maps them, exactly once, across a restart, a
//! secondary that is down for a while, and a transaction the secondary refuses.

mod mirror_support;
mod sql_support;

use std::time::Duration;

use mirror_support::{capture_binary, capture_text, finish, split, xid, Mirror};
use pgbridge::config::OnError;
use pgbridge::mirror::{Change, ChangeOp, TxnRecord, WaitError};
use pgbridge::pgcluster::{PgOptions, PgServer};
use pgbridge::rules::TableName;
use sql_support::{connect, dxy_pair, rows, ruleset, url, DXY_RULES};
use tokio_postgres::{Client, NoTls};

const OIDS: &[u32] = &[25, 1184, 1700, 1700, 1700, 1700, 20];
const RET: &str = "RETURNING symbol, ts, open, high, low, close, volume";
const EXPECTED: &str = "SELECT 'DXY.IDX', '1m', ts, open, high, low, close, volume, 't' \
    FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts";
const ACTUAL: &str =
    "SELECT symbol, timeframe, ts, open, high, low, close_px, volume, is_synthetic \
    FROM data_bars WHERE symbol <> 'ABC' ORDER BY ts";

fn table() -> TableName {
    TableName::new("public", "derived_data_bars")
}

fn upserts(rows: Vec<pgbridge::mirror::Row>, in_filter: Option<bool>) -> Vec<Change> {
    rows.into_iter()
        .map(|row| Change {
            table: table(),
            op: ChangeOp::Upsert {
                row,
                in_filter,
                effect: None,
            },
        })
        .collect()
}

fn insert(ts: &str, close: &str, volume: i64) -> String {
    format!(
        "INSERT INTO derived_data_bars VALUES ('DXY', '{ts}', 100.5, 101.25, 99.125, {close}, {volume}) {RET}"
    )
}

async fn begin(primary: &Client, session: u64) -> TxnRecord {
    primary.batch_execute("BEGIN").await.unwrap();
    TxnRecord::new(session, Some(xid(primary).await))
}

/// One committed transaction of inserts, captured in binary.
async fn insert_txn(primary: &Client, m: &Mirror, ts: &str, volume: i64) -> u64 {
    let mut t = begin(primary, 9).await;
    t.changes = upserts(
        capture_binary(primary, &insert(ts, "100.75", volume)).await,
        None,
    );
    finish(primary, &m.journal, &t, true).await
}

#[tokio::test]
async fn a_dxy_workload_reaches_data_bars_exactly_once() {
    let (p, s) = dxy_pair().await;
    let primary = connect(&p).await;
    let secondary = connect(&s).await;
    // Counts every row the applier writes, to see nothing is applied twice.
    secondary
        .batch_execute(
            "CREATE TABLE apply_log (n bigserial, op text);
             CREATE FUNCTION log_apply() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO apply_log (op) VALUES (TG_OP); RETURN NULL; END $$;
             CREATE TRIGGER log_apply AFTER INSERT OR UPDATE OR DELETE ON data_bars
               FOR EACH ROW EXECUTE FUNCTION log_apply();
             INSERT INTO data_bars VALUES ('DXY.IDX', '1m', '2020-01-01', 1, 1, 1, 1, 1, true),
                                          ('ABC', '1d', '2020-01-01', 1, 1, 1, 1, 1, false);",
        )
        .await
        .unwrap();
    let mut m = Mirror::new(ruleset(&p, &s, DXY_RULES).await);
    let applier = m.applier(&url(&s), OnError::Halt);

    // T1: TRUNCATE: the rule's rows on the target go, other rows stay.
    let mut t = begin(&primary, 1).await;
    primary
        .batch_execute("TRUNCATE derived_data_bars")
        .await
        .unwrap();
    t.changes.push(Change {
        table: table(),
        op: ChangeOp::Truncate,
    });
    finish(&primary, &m.journal, &t, true).await;

    // T2: binary row images, a non-DXY row among them (the applier evaluates the `where`).
    let mut t = begin(&primary, 2).await;
    let mut captured = Vec::new();
    for ts in [
        "2026-01-05 10:00:00+00",
        "2026-01-05 10:01:00+00",
        "2026-01-05 10:02:00+00",
    ] {
        captured.extend(capture_binary(&primary, &insert(ts, "100.75", 1000)).await);
    }
    captured.extend(
        capture_binary(
            &primary,
            &format!("INSERT INTO derived_data_bars VALUES ('EURUSD', '2026-01-05 10:00+00', 1, 2, 0.5, 1.5, 7) {RET}"),
        )
        .await,
    );
    t.changes = upserts(captured, None);
    finish(&primary, &m.journal, &t, true).await;

    // T3: text row images under the session's own DateStyle and TimeZone.
    primary
        .batch_execute("SET DateStyle = 'SQL, DMY'; SET TimeZone = 'America/New_York'")
        .await
        .unwrap();
    let mut t = begin(&primary, 3).await;
    t.settings = vec![
        ("DateStyle".into(), "SQL, DMY".into()),
        ("TimeZone".into(), "America/New_York".into()),
    ];
    let mut captured = capture_text(
        &primary,
        &insert("2026-01-05 10:03:00+00", "100.123456", 5),
        OIDS,
    )
    .await;
    captured.extend(
        capture_text(
            &primary,
            &format!("UPDATE derived_data_bars SET close = 123.456789, volume = volume + 1 WHERE symbol = 'DXY' AND ts = '2026-01-05 05:00:00-05' {RET}"),
            OIDS,
        )
        .await,
    );
    assert_eq!(captured.len(), 2);
    assert!(
        captured[0].values[1].display().contains("EST"),
        "{:?}",
        captured[0].values[1].display()
    );
    t.changes = upserts(captured, Some(true));
    finish(&primary, &m.journal, &t, true).await;
    primary
        .batch_execute("RESET DateStyle; RESET TimeZone")
        .await
        .unwrap();

    // T4: an UPDATE of a key column, with its old key (as the capture rewrite reads it).
    let mut t = begin(&primary, 4).await;
    let captured = capture_binary(
        &primary,
        "UPDATE derived_data_bars AS d SET ts = d.ts + interval '1 hour' \
         FROM (SELECT ctid AS c, symbol AS k0, ts AS k1 FROM derived_data_bars \
               WHERE symbol = 'DXY' AND ts = '2026-01-05 10:02+00' FOR UPDATE) AS o \
         WHERE d.ctid = o.c RETURNING d.symbol, d.ts, d.open, d.high, d.low, d.close, d.volume, o.k0, o.k1",
    )
    .await;
    for r in captured {
        let (row, old_key) = split(&r, 7, &["symbol", "ts"]);
        t.changes.push(Change {
            table: table(),
            op: ChangeOp::UpdateKey {
                old_key,
                row,
                in_filter: Some(true),
            },
        });
    }
    finish(&primary, &m.journal, &t, true).await;

    // T5: deletes, one of a row outside the rule (captured as such).
    let mut t = begin(&primary, 5).await;
    for (sql, in_filter) in [
        ("DELETE FROM derived_data_bars WHERE ts = '2026-01-05 10:01+00' AND symbol = 'DXY' RETURNING symbol, ts", None),
        ("DELETE FROM derived_data_bars WHERE symbol = 'EURUSD' RETURNING symbol, ts", Some(false)),
    ] {
        for key in capture_binary(&primary, sql).await {
            t.changes.push(Change {
                table: table(),
                op: ChangeOp::Delete { key, in_filter },
            });
        }
    }
    let last_committed = finish(&primary, &m.journal, &t, true).await;

    // T6: rolled back on the primary: never applied.
    let mut t = begin(&primary, 6).await;
    t.changes = upserts(
        capture_binary(&primary, &insert("2026-01-05 11:00+00", "1", 1)).await,
        None,
    );
    let last = finish(&primary, &m.journal, &t, false).await;

    applier
        .wait_applied(last, Duration::from_secs(20))
        .await
        .unwrap();
    let expected = rows(&primary, EXPECTED).await;
    assert_eq!(expected.len(), 3);
    assert_eq!(rows(&secondary, ACTUAL).await, expected);
    assert_eq!(
        rows(
            &secondary,
            "SELECT count(*) FROM data_bars WHERE symbol = 'ABC'"
        )
        .await,
        vec![vec![Some("1".to_string())]],
        "a row the rule does not own survives the TRUNCATE"
    );
    let position = format!(
        "SELECT id FROM pgbridge.applied WHERE journal = '{}'",
        m.journal.uuid()
    );
    // The position is that of the last applied transaction; the aborted one after it needs no
    // secondary transaction of its own (a restart skips it again), unless it shared a batch.
    let recorded = rows(&secondary, &position).await;
    assert!(
        recorded == vec![vec![Some(last_committed.to_string())]]
            || recorded == vec![vec![Some(last.to_string())]],
        "{recorded:?}"
    );
    let report = applier.report();
    assert_eq!(report.applied_seq, last);
    assert_eq!(report.journal_seq, last);
    assert_eq!((report.parked, report.lag_transactions), (0, 0));
    let writes = rows(&secondary, "SELECT count(*) FROM apply_log").await;

    // Restart: the journal reopened and a new applier resume after the position, nothing twice.
    applier.stop();
    drop(applier);
    m.reopen().await;
    let applier = m.applier(&url(&s), OnError::Halt);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rows(&secondary, "SELECT count(*) FROM apply_log").await,
        writes
    );
    let id = insert_txn(&primary, &m, "2026-01-05 12:00+00", 42).await;
    assert_eq!(id, last + 1);
    applier
        .wait_applied(id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        rows(&secondary, ACTUAL).await,
        rows(&primary, EXPECTED).await
    );
    let after: i64 = rows(&secondary, "SELECT count(*) FROM apply_log").await[0][0]
        .as_ref()
        .unwrap()
        .parse()
        .unwrap();
    let before: i64 = writes[0][0].as_ref().unwrap().parse().unwrap();
    assert_eq!(after, before + 1, "only the new row was written");
    assert!(m.divergences().is_empty());
}

#[tokio::test]
async fn a_secondary_down_for_a_while_loses_nothing() {
    let (p, _) = dxy_pair().await;
    let mut server = PgServer::start(&PgOptions::default()).unwrap();
    let admin_url = server.url("postgres", "postgres");
    let (admin, conn) = tokio_postgres::connect(&admin_url, NoTls).await.unwrap();
    tokio::spawn(conn);
    admin.batch_execute("CREATE DATABASE s").await.unwrap();
    let s_url = server.url("postgres", "s");
    let (sc, conn) = tokio_postgres::connect(&s_url, NoTls).await.unwrap();
    tokio::spawn(conn);
    sc.batch_execute(sql_support::SECONDARY_DDL).await.unwrap();
    let rules = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, DXY_RULES).unwrap();
        pgbridge::rules::load_online(
            &path,
            &url(&p).parse().unwrap(),
            Some(&s_url.parse().unwrap()),
        )
        .await
        .unwrap()
    };
    let primary = connect(&p).await;
    primary
        .batch_execute("DELETE FROM derived_data_bars")
        .await
        .unwrap();
    let m = Mirror::new(rules);
    let applier = m.applier(&s_url, OnError::Halt);
    let first = insert_txn(&primary, &m, "2026-01-05 10:00+00", 1).await;
    applier
        .wait_applied(first, Duration::from_secs(20))
        .await
        .unwrap();

    server.stop().unwrap();
    let mut last = first;
    for i in 1..=20 {
        last = insert_txn(&primary, &m, &format!("2026-01-05 11:{i:02}+00"), i).await;
    }
    assert_eq!(
        applier.wait_applied(last, Duration::from_secs(2)).await,
        Err(WaitError::Timeout)
    );
    let report = applier.report();
    assert!(report.retries > 0, "{report:?}");
    assert_eq!(report.applied_seq, first);
    assert_eq!(report.lag_transactions, 20);
    assert!(report.lag_seconds > 1.0, "{report:?}");
    assert!(!report.connected);

    server.start_again().unwrap();
    applier
        .wait_applied(last, Duration::from_secs(30))
        .await
        .unwrap();
    let (sc, conn) = tokio_postgres::connect(&s_url, NoTls).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(rows(&sc, ACTUAL).await, rows(&primary, EXPECTED).await);
    assert_eq!(rows(&sc, ACTUAL).await.len(), 21);
    assert_eq!(applier.report().lag_transactions, 0);
}

/// Waits until `bad` is parked and `last` applied; the target's volumes, in ts order.
async fn parked_then_applied(
    applier: &pgbridge::mirror::apply::ApplierHandle,
    secondary: &Client,
    bad: u64,
    last: u64,
) -> Vec<Vec<Option<String>>> {
    assert_eq!(
        applier.wait_applied(bad, Duration::from_secs(20)).await,
        Err(WaitError::Parked)
    );
    applier
        .wait_applied(last, Duration::from_secs(20))
        .await
        .unwrap();
    rows(secondary, "SELECT volume FROM data_bars ORDER BY ts").await
}

async fn refused_setup() -> (Client, Client, Mirror) {
    let (p, s) = dxy_pair().await;
    let primary = connect(&p).await;
    let secondary = connect(&s).await;
    primary
        .batch_execute("DELETE FROM derived_data_bars")
        .await
        .unwrap();
    // A constraint the target adds: a volume this large is refused there.
    secondary
        .batch_execute("ALTER TABLE data_bars ADD CONSTRAINT small CHECK (volume < 1000000)")
        .await
        .unwrap();
    let m = Mirror::new(ruleset(&p, &s, DXY_RULES).await);
    (primary, secondary, m)
}

#[tokio::test]
async fn a_refused_transaction_is_parked_and_later_ones_go_on() {
    let (primary, secondary, m) = refused_setup().await;
    let s_url = secondary_url(&secondary).await;
    let applier = m.applier(&s_url, OnError::Skip);
    insert_txn(&primary, &m, "2026-01-05 10:00+00", 1).await;
    let bad = insert_txn(&primary, &m, "2026-01-05 10:01+00", 5_000_000).await;
    let last = insert_txn(&primary, &m, "2026-01-05 10:02+00", 3).await;
    let got = parked_then_applied(&applier, &secondary, bad, last).await;
    assert_eq!(got, vec![vec![Some("1".into())], vec![Some("3".into())]]);
    assert_eq!(applier.report().parked, 1);
    assert_eq!(
        pgbridge::mirror::parked::list(m.journal.dir()),
        vec![bad],
        "kept for an operator"
    );
    let parked = pgbridge::mirror::parked::load(m.journal.dir(), bad).unwrap();
    assert_eq!(parked.changes.len(), 1);
    let d = m.divergences();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["kind"], "secondary_error");
    assert_eq!(d[0]["table"], "derived_data_bars");
    assert_eq!(d[0]["secondary"], "23514");
    assert_eq!(d[0]["detail"]["journal_id"], bad);
    assert_eq!(
        d[0]["detail"]["key"],
        serde_json::json!(["symbol", "ts", "open", "high", "low", "close", "volume"]),
        "redacted: column names only"
    );
    assert_eq!(m.recorder.counts().by_kind["secondary_error"], 1);
}

#[tokio::test]
async fn in_a_pipelined_batch_the_refused_transaction_is_the_one_parked() {
    let (primary, secondary, m) = refused_setup().await;
    let s_url = secondary_url(&secondary).await;
    insert_txn(&primary, &m, "2026-01-05 10:00+00", 1).await;
    insert_txn(&primary, &m, "2026-01-05 10:01+00", 2).await;
    let bad = insert_txn(&primary, &m, "2026-01-05 10:02+00", 5_000_000).await;
    let last = insert_txn(&primary, &m, "2026-01-05 10:03+00", 4).await;
    // Started after the four: they come as one batch, their statements pipelined.
    let applier = m.applier(&s_url, OnError::Skip);
    let got = parked_then_applied(&applier, &secondary, bad, last).await;
    let volumes: Vec<Vec<Option<String>>> = ["1", "2", "4"]
        .iter()
        .map(|v| vec![Some(v.to_string())])
        .collect();
    assert_eq!(got, volumes);
    assert_eq!(pgbridge::mirror::parked::list(m.journal.dir()), vec![bad]);
}

#[tokio::test]
async fn a_row_written_twice_in_a_transaction_is_applied_once_with_its_last_image() {
    let (primary, secondary, m) = refused_setup().await;
    let s_url = secondary_url(&secondary).await;
    let applier = m.applier(&s_url, OnError::Skip);
    let mut t = begin(&primary, 9).await;
    // The first image would be refused by the target's constraint; the second replaces it
    // within the transaction, and only the transaction's result reaches the target.
    t.changes = upserts(
        capture_binary(
            &primary,
            &insert("2026-01-05 11:00+00", "100.75", 5_000_000),
        )
        .await,
        Some(true),
    );
    t.changes.extend(upserts(
        capture_binary(
            &primary,
            &format!(
                "UPDATE derived_data_bars SET volume = 6 WHERE ts = '2026-01-05 11:00+00' {RET}"
            ),
        )
        .await,
        Some(true),
    ));
    assert_eq!(t.changes.len(), 2);
    let id = finish(&primary, &m.journal, &t, true).await;
    applier
        .wait_applied(id, Duration::from_secs(20))
        .await
        .unwrap();
    let got = rows(&secondary, "SELECT volume FROM data_bars").await;
    assert_eq!(got, vec![vec![Some("6".to_string())]]);
    assert_eq!(applier.report().parked, 0);
}

#[tokio::test]
async fn a_refused_transaction_halts_the_mirror_until_fixed() {
    let (primary, secondary, m) = refused_setup().await;
    let s_url = secondary_url(&secondary).await;
    let applier = m.applier(&s_url, OnError::Halt);
    let first = insert_txn(&primary, &m, "2026-01-05 10:00+00", 1).await;
    let bad = insert_txn(&primary, &m, "2026-01-05 10:01+00", 5_000_000).await;
    let last = insert_txn(&primary, &m, "2026-01-05 10:02+00", 3).await;
    assert_eq!(
        applier.wait_applied(last, Duration::from_secs(2)).await,
        Err(WaitError::Timeout)
    );
    let report = applier.report();
    assert!(report.halted, "{report:?}");
    assert_eq!((report.applied_seq, report.parked), (first, 1));
    assert_eq!(
        m.divergences().len(),
        1,
        "recorded once, not on every retry"
    );
    // The operator fixes the target: the mirror resumes in order.
    secondary
        .batch_execute("ALTER TABLE data_bars DROP CONSTRAINT small")
        .await
        .unwrap();
    applier
        .wait_applied(last, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(bad < last);
    assert_eq!(
        rows(&secondary, ACTUAL).await,
        rows(&primary, EXPECTED).await
    );
    let report = applier.report();
    assert!(!report.halted);
    assert_eq!(report.parked, 0);
    assert!(pgbridge::mirror::parked::list(m.journal.dir()).is_empty());
}

#[tokio::test]
async fn nulls_binary_values_and_custom_types_apply() {
    let p = sql_support::fresh_db(
        "p",
        "CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE TABLE notes (id int PRIMARY KEY, body text, amount numeric(10,2), at timestamptz,
                             m mood, tags text[], raw bytea, f float8)",
    )
    .await;
    let s = sql_support::fresh_db(
        "s",
        "CREATE TYPE spare AS ENUM ('x'); CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE TABLE notes2 (id int PRIMARY KEY, body text, amount numeric(10,2), at timestamptz,
                              m mood, tags text[], raw bytea, f float8)",
    )
    .await;
    let rules = "[[table]]\nsource = \"notes\"\ntarget = \"notes2\"\nkey = [\"id\"]\n";
    let m = Mirror::new(ruleset(&p, &s, rules).await);
    let primary = connect(&p).await;
    let secondary = connect(&s).await;
    let applier = m.applier(&url(&s), OnError::Skip);
    let mut t = begin(&primary, 1).await;
    let mut captured = capture_binary(
        &primary,
        "INSERT INTO notes VALUES (1, 'a''b', 12.5, '2026-01-05 10:00:00.123456+00', 'sad', '{x,\"y z\"}', '\\x00ff', 0.1),
                                  (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL) RETURNING *",
    )
    .await;
    let oids: Vec<u32> = captured[0].values.iter().map(|v| v.type_oid).collect();
    captured.extend(
        capture_text(
            &primary,
            "INSERT INTO notes VALUES (3, 'text', -1.01, '2026-01-05 10:00+05', 'ok', '{}', '\\x', 1e300),
                                      (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL) RETURNING *",
            &oids,
        )
        .await,
    );
    t.changes = captured
        .into_iter()
        .map(|row| Change {
            table: TableName::new("public", "notes"),
            op: ChangeOp::Upsert {
                row,
                in_filter: None,
                effect: None,
            },
        })
        .collect();
    let id = finish(&primary, &m.journal, &t, true).await;
    applier
        .wait_applied(id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        rows(&secondary, "SELECT * FROM notes2 ORDER BY id").await,
        rows(&primary, "SELECT * FROM notes ORDER BY id").await
    );
    assert!(m.divergences().is_empty());
}

/// The url of the database `c` is connected to (on the shared test server).
async fn secondary_url(c: &Client) -> String {
    let db: String = c
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    url(&db)
}

/// A rough figure: `cargo test --test mirror_apply apply_rate -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn apply_rate() {
    let (p, s) = dxy_pair().await;
    let primary = connect(&p).await;
    primary
        .batch_execute("DELETE FROM derived_data_bars")
        .await
        .unwrap();
    let m = Mirror::new(ruleset(&p, &s, DXY_RULES).await);
    // Row images captured once, journaled many times (one row per transaction).
    let rows_bin = capture_binary(&primary, &insert("2026-01-05 10:00+00", "1.5", 1)).await;
    let n = 5000u64;
    let mut last = 0;
    for i in 0..n {
        let mut t = TxnRecord::new(i, Some(1));
        let mut row = rows_bin[0].clone();
        row.values[6] = pgbridge::mirror::Value::text(20, &i.to_string());
        row.values[1] = pgbridge::mirror::Value::text(
            1184,
            &format!(
                "2026-01-{:02} {:02}:{:02}:00+00",
                1 + i / 1440,
                i / 60 % 24,
                i % 60
            ),
        );
        t.changes = upserts(vec![row], Some(true));
        last = m.journal.append_intent(&t).await.unwrap();
        m.journal.append_outcome(last, true).unwrap();
    }
    let start = std::time::Instant::now();
    let applier = m.applier(&url(&s), OnError::Halt);
    applier
        .wait_applied(last, Duration::from_secs(120))
        .await
        .unwrap();
    let elapsed = start.elapsed();
    println!(
        "applied {n} one-row transactions in {elapsed:?}: {:.0} txn/s",
        n as f64 / elapsed.as_secs_f64()
    );
    let secondary = connect(&s).await;
    assert_eq!(
        rows(&secondary, "SELECT count(*) FROM data_bars").await,
        vec![vec![Some(n.to_string())]]
    );
}
