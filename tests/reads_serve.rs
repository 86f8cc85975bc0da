//! Reads served by the secondary: with the DXY table's reads flipped to `secondary`, clients get
//! byte for byte what the primary would have sent them, from the secondary; a secondary that
//! fails a read hands it to the primary and the failure is recorded; flipping under load breaks
//! nothing; a session reads its own writes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dxy::*;
use common::wire::{self, Wire};
use common::*;

const SERVED: &str = "pgbridge_secondary_reads_total";

/// A DXY pair with `n` one-minute bars written through pgbridge and applied on the secondary.
async fn with_bars(hint: &str, secondary_port: u16, n: usize, extra: &str) -> (Bridge, String) {
    let db = fresh_db(hint);
    if secondary_port != cluster().secondary_port {
        psql_on(secondary_port, "postgres", &format!("CREATE DATABASE {db}"));
    }
    let (bridge, db) = mirrored_with(cluster().primary_port, secondary_port, &db, DXY_RULE, extra);
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    let values: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "('DXY', '2026-01-05 10:00+00'::timestamptz + interval '{i} minutes', {o}, {h}, {l}, {c}, {v})",
                o = 100 + i,
                h = 101 + i,
                l = 99 + i,
                c = 100.0 + i as f64 * 1.01,
                v = 1000 + 10 * i,
            )
        })
        .collect();
    client
        .batch_execute(&format!("{INSERT} {}", values.join(", ")))
        .await
        .unwrap();
    wait_applied(&bridge);
    (bridge, db)
}

/// Sends each request of `req` (up to its Query or Sync) once the previous one is answered, as
/// an application does; returns every reply frame.
fn exchange(port: u16, db: &str, req: &[u8]) -> Vec<u8> {
    let mut w = Wire::connect(port);
    w.startup("postgres", db);
    let (mut at, mut start) = (0, 0);
    let mut frames = Vec::new();
    while at < req.len() {
        let tag = req[at];
        at += 1 + u32::from_be_bytes(req[at + 1..at + 5].try_into().unwrap()) as usize;
        if matches!(tag, b'Q' | b'S') {
            w.send(&req[start..at]);
            frames.extend(w.frames_until_ready(1));
            start = at;
        }
    }
    wire::encode(&frames)
}

#[tokio::test]
async fn reads_served_by_the_secondary_are_byte_identical_to_the_primarys() {
    let (bridge, db) = with_bars("serve_bytes", cluster().secondary_port, 30, "").await;
    set_reads(&bridge, "secondary");
    let mut req = Vec::new();
    let q = |req: &mut Vec<u8>, sql: &str| req.extend(wire::query(sql));
    // Settings that shape values follow the session to the secondary.
    q(&mut req, "SET extra_float_digits = 0");
    q(
        &mut req,
        "SET DateStyle = 'German'; SET TimeZone = 'Asia/Tokyo'",
    );
    for sql in [
        "SELECT * FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts",
        "SELECT symbol, close FROM derived_data_bars WHERE symbol = 'DXY' AND ts >= '2026-01-05 10:05:00+00' ORDER BY ts LIMIT 5",
        // The same shape: the primary's description is known.
        "SELECT symbol, close FROM derived_data_bars WHERE symbol = 'DXY' AND ts >= '2026-01-05 10:15:00+00' ORDER BY ts LIMIT 3",
        "SELECT count(*), max(close), min(open), sum(volume), avg(close), avg(volume)::float8 FROM derived_data_bars WHERE symbol = 'DXY'",
        "SELECT i.description, d.close FROM derived_data_bars d JOIN instruments i ON i.symbol = d.symbol WHERE d.symbol = 'DXY' ORDER BY d.ts LIMIT 3",
        "WITH last AS (SELECT max(ts) AS ts FROM derived_data_bars WHERE symbol = 'DXY') SELECT d.* FROM derived_data_bars d, last WHERE d.symbol = 'DXY' AND d.ts = last.ts",
        "SELECT x.ts FROM (SELECT ts, close FROM derived_data_bars WHERE symbol = 'DXY' AND close > 110) AS x ORDER BY x.ts DESC LIMIT 4",
        "SELECT * FROM derived_data_bars WHERE symbol = 'DXY' AND close < 0",
        // Beyond the rule's `where`: the primary's to answer.
        "SELECT count(*) FROM derived_data_bars",
        // Fails on both sides alike: the primary's error, and no divergence.
        "SELECT close / 0 FROM derived_data_bars WHERE symbol = 'DXY'",
    ] {
        q(&mut req, sql);
    }
    // Extended protocol: a named statement with parameters whose types the server infers,
    // binary results, described; then run again in a batch of its own.
    let bars = "SELECT ts, close, volume FROM derived_data_bars WHERE symbol = $1 AND volume >= $2 ORDER BY ts";
    req.extend(wire::parse("bars", bars, &[]));
    req.extend(wire::describe(b'S', "bars"));
    req.extend(wire::bind("", "bars", 0, &[Some(b"DXY"), Some(b"1100")], 1));
    req.extend(wire::describe(b'P', ""));
    req.extend(wire::execute("", 0));
    req.extend(wire::sync());
    req.extend(wire::bind("", "bars", 0, &[Some(b"DXY"), Some(b"1250")], 0));
    req.extend(wire::execute("", 0));
    req.extend(wire::sync());
    req.extend(wire::bind("", "bars", 0, &[Some(b"DXY"), Some(b"1200")], 1));
    req.extend(wire::describe(b'P', ""));
    req.extend(wire::execute("", 0));
    req.extend(wire::sync());
    // Bound beyond the rule's `where`: the primary's.
    req.extend(wire::bind("", "bars", 0, &[Some(b"EURUSD"), Some(b"0")], 1));
    req.extend(wire::execute("", 0));
    req.extend(wire::sync());
    // The unnamed statement, as libpq's PQexecParams sends it, twice.
    for min in ["100.5", "120.5"] {
        req.extend(wire::parse(
            "",
            "SELECT max(ts), count(*) FROM derived_data_bars WHERE symbol = 'DXY' AND close > $1",
            &[1700],
        ));
        req.extend(wire::bind("", "", 0, &[Some(min.as_bytes())], 1));
        req.extend(wire::describe(b'P', ""));
        req.extend(wire::execute("", 0));
        req.extend(wire::sync());
    }
    // Inside a transaction that has not written.
    q(&mut req, "BEGIN");
    q(
        &mut req,
        "SELECT ts, open FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts DESC LIMIT 2",
    );
    q(&mut req, "COMMIT");

    let before = metric(&bridge, SERVED, "result=\"served\"");
    let via = exchange(bridge.port, &db, &req);
    let direct = exchange(cluster().primary_port, &db, &req);
    assert_eq!(
        String::from_utf8_lossy(&via),
        String::from_utf8_lossy(&direct),
        "the replies through pgbridge differ from the primary's"
    );
    assert_eq!(via, direct);
    let served = metric(&bridge, SERVED, "result=\"served\"") - before;
    // Every read but the failing one, and the two Binds in the same batch as the first Parse of
    // their statement text (the primary describes the statement in that batch).
    assert_eq!(served, 12.0, "reads the secondary served");
    assert_eq!(metric(&bridge, SERVED, "result=\"fallback\""), 1.0);
    assert_eq!(
        status(&bridge)["divergences"]["total"],
        0,
        "{}",
        bridge.log()
    );

    // The secondary it is: a row changed there behind pgbridge's back shows through it.
    psql_on(
        cluster().secondary_port,
        &db,
        "UPDATE data_bars SET volume = 424242 WHERE ts = '2026-01-05 10:03+00'",
    );
    let read =
        "SELECT volume FROM derived_data_bars WHERE symbol = 'DXY' AND ts = '2026-01-05 10:03+00'";
    let via = psql_on(bridge.port, &db, read);
    assert_eq!(via.trim(), "424242");
    assert_eq!(psql_on(cluster().primary_port, &db, read).trim(), "1030");
    set_reads(&bridge, "primary");
    assert_eq!(psql_on(bridge.port, &db, read).trim(), "1030");
}

#[tokio::test]
async fn tokio_postgres_and_psql_read_from_the_secondary() {
    let (bridge, db) = with_bars("serve_clients", cluster().secondary_port, 10, "").await;
    set_reads(&bridge, "secondary");
    let via = connect(&bridge.conn_str("postgres", "", &db)).await;
    let direct = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        cluster().primary_port
    ))
    .await;
    let sql =
        "SELECT ts, close, volume, symbol FROM derived_data_bars WHERE symbol = 'DXY' AND close > $1 ORDER BY ts";
    let sql = sql.replace("$1", "$1::text::numeric");
    for min in ["103.0", "105.5", "0"] {
        let a = via.query(&sql, &[&min]).await.unwrap();
        let b = direct.query(&sql, &[&min]).await.unwrap();
        assert!(!a.is_empty());
        let raw = |rows: &[tokio_postgres::Row]| -> Vec<Vec<raw::Raw>> {
            rows.iter()
                .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
                .collect()
        };
        assert_eq!(raw(&a), raw(&b), "binary rows differ");
    }
    let psql = |port: u16| {
        psql_script(
            &format!("host=127.0.0.1 port={port} user=postgres dbname={db}"),
            "\\pset format aligned\nSELECT symbol, ts, close FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts DESC LIMIT 4;\n\
             SELECT count(*) FROM derived_data_bars d JOIN instruments i ON i.symbol = d.symbol WHERE d.symbol = 'DXY';\n",
        )
    };
    assert_eq!(psql(bridge.port), psql(cluster().primary_port));
    assert!(metric(&bridge, SERVED, "result=\"served\"") >= 5.0);

    // After a write to any table, the transaction's reads are the primary's: they see it.
    let both = "SELECT (SELECT count(*) FROM instruments), count(*) FROM derived_data_bars d \
                JOIN instruments i ON i.symbol = d.symbol WHERE d.symbol = 'DXY'";
    let counts = |r: tokio_postgres::Row| (r.get::<_, i64>(0), r.get::<_, i64>(1));
    via.batch_execute("BEGIN; INSERT INTO instruments VALUES ('XAU', 'Gold')")
        .await
        .unwrap();
    let served = metric(&bridge, SERVED, "result=\"served\"");
    assert_eq!(counts(via.query_one(both, &[]).await.unwrap()), (3, 10));
    assert_eq!(metric(&bridge, SERVED, "result=\"served\""), served);
    via.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(counts(via.query_one(both, &[]).await.unwrap()), (2, 10));
    assert_eq!(metric(&bridge, SERVED, "result=\"served\""), served + 1.0);
}

/// A value as the server sent it (binary), with its type.
mod raw {
    use tokio_postgres::types::{FromSql, Type};

    #[derive(Debug, PartialEq)]
    pub struct Raw(Type, Option<Vec<u8>>);

    impl<'a> FromSql<'a> for Raw {
        fn from_sql(
            ty: &Type,
            raw: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Raw(ty.clone(), Some(raw.to_vec())))
        }
        fn from_sql_null(ty: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Raw(ty.clone(), None))
        }
        fn accepts(_: &Type) -> bool {
            true
        }
    }
}

#[tokio::test]
async fn a_read_the_secondary_fails_is_served_by_the_primary_and_recorded() {
    let mut secondary = start_server();
    let (bridge, db) = with_bars(
        "serve_fail",
        secondary.port(),
        5,
        "[reads]\nretry_after_ms = 200\n",
    )
    .await;
    set_reads(&bridge, "secondary");
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    let read = "SELECT count(*) FROM derived_data_bars WHERE symbol = 'DXY' AND volume > 0";
    let count = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, i64>(0);
    assert_eq!(count(client.query(read, &[]).await.unwrap()), 5);
    assert_eq!(metric(&bridge, SERVED, "result=\"served\""), 1.0);

    // A target column renamed: the secondary answers with an error, the primary with the rows.
    psql_on(
        secondary.port(),
        &db,
        "ALTER TABLE data_bars RENAME COLUMN volume TO vol",
    );
    assert_eq!(count(client.query(read, &[]).await.unwrap()), 5);
    let s = status(&bridge);
    assert_eq!(s["divergences"]["by_kind"]["secondary_error"], 1, "{s}");
    psql_on(
        secondary.port(),
        &db,
        "ALTER TABLE data_bars RENAME COLUMN vol TO volume",
    );

    // The secondary down: reads go on, from the primary; the failure is recorded once, then the
    // session rests before trying again.
    secondary.stop().unwrap();
    for _ in 0..5 {
        assert_eq!(count(client.query(read, &[]).await.unwrap()), 5);
    }
    let s = status(&bridge);
    assert_eq!(s["divergences"]["by_kind"]["secondary_error"], 2, "{s}");
    assert!(metric(&bridge, SERVED, "result=\"resting\"") >= 1.0);
    secondary.start_again().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let served = metric(&bridge, SERVED, "result=\"served\"");
    assert_eq!(count(client.query(read, &[]).await.unwrap()), 5);
    assert_eq!(
        metric(&bridge, SERVED, "result=\"served\""),
        served + 1.0,
        "served by the secondary again once it is back"
    );
}

#[test]
fn a_user_without_the_privilege_gets_the_primarys_refusal() {
    let c = cluster();
    let db = fresh_db("serve_privilege");
    let (bridge, db) = mirrored_with(c.primary_port, c.secondary_port, &db, DXY_RULE, "");
    psql_on(
        c.primary_port,
        &db,
        "DO $$ BEGIN CREATE ROLE serve_nopriv LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         GRANT SELECT ON instruments TO serve_nopriv",
    );
    set_reads(&bridge, "secondary");
    let read = "SELECT count(*) FROM derived_data_bars WHERE symbol = 'DXY'\n";
    let run = |port: u16| {
        psql_script(
            &format!("host=127.0.0.1 port={port} user=serve_nopriv dbname={db}"),
            read,
        )
    };
    let (via, direct) = (run(bridge.port), run(c.primary_port));
    assert!(via.0.contains("permission denied"), "{via:?}");
    assert_eq!(via, direct);
    assert_eq!(metric(&bridge, SERVED, "result=\"served\""), 0.0);
    assert!(metric(&bridge, SERVED, "result=\"no_privilege\"") >= 1.0);
    // The superuser's same read is served by the secondary.
    psql_on(bridge.port, &db, read);
    assert_eq!(metric(&bridge, SERVED, "result=\"served\""), 1.0);
}

#[tokio::test]
async fn a_cancelled_read_on_the_secondary_is_cancelled_there() {
    let (bridge, db) = with_bars("serve_cancel", cluster().secondary_port, 30, "").await;
    set_reads(&bridge, "secondary");
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    // 30^5 rows to count: seconds of work on the secondary.
    let slow =
        "SELECT count(*) FROM derived_data_bars a, derived_data_bars b, derived_data_bars c, \
                derived_data_bars d, derived_data_bars e WHERE a.symbol = 'DXY' AND b.symbol = 'DXY' \
                AND c.symbol = 'DXY' AND d.symbol = 'DXY' AND e.symbol = 'DXY'";
    let token = client.cancel_token();
    let started = Instant::now();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let err = client.simple_query(slow).await.unwrap_err();
    cancel.await.unwrap();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cancelled after {:?}",
        started.elapsed()
    );
    assert_eq!(metric(&bridge, SERVED, "result=\"cancelled\""), 1.0);
    assert_eq!(metric(&bridge, SERVED, "result=\"fallback\""), 0.0);
    // The session goes on, served by the secondary.
    let rows = client
        .simple_query("SELECT count(*) FROM derived_data_bars WHERE symbol = 'DXY'")
        .await
        .unwrap();
    let counted = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(counted.as_deref(), Some("30"));
    assert_eq!(metric(&bridge, SERVED, "result=\"served\""), 1.0);
    assert_eq!(status(&bridge)["divergences"]["total"], 0);
}

#[tokio::test]
async fn a_large_read_is_served_by_the_primary_as_it_streams() {
    let (bridge, db) = with_bars("serve_large", cluster().secondary_port, 400, "").await;
    set_reads(&bridge, "secondary");
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    // 160,000 rows of some 100 bytes: more than pgbridge keeps of an answer.
    let rows = client
        .simple_query(
            "SELECT a.*, b.ts FROM derived_data_bars a, derived_data_bars b \
             WHERE a.symbol = 'DXY' AND b.symbol = 'DXY'",
        )
        .await
        .unwrap();
    let count = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(count, 160_000);
    assert_eq!(metric(&bridge, SERVED, "result=\"too_large\""), 1.0);
    assert_eq!(metric(&bridge, SERVED, "result=\"served\""), 0.0);
    assert!(
        bridge.peak_rss() < 80 << 20,
        "pgbridge's peak RSS {} MB",
        bridge.peak_rss() >> 20
    );
    // The next read goes to the secondary again.
    client
        .simple_query("SELECT count(*) FROM derived_data_bars WHERE symbol = 'DXY'")
        .await
        .unwrap();
    assert_eq!(metric(&bridge, SERVED, "result=\"served\""), 1.0);
}

#[tokio::test]
async fn flipping_reads_under_load_loses_no_query() {
    let (bridge, db) = with_bars("serve_flip", cluster().secondary_port, 20, "").await;
    let conn = bridge.conn_str("postgres", "", &db);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (conn, stop) = (conn.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect(&conn).await;
            let stmt = client
                .prepare(
                    "SELECT count(*), sum(volume)::bigint FROM derived_data_bars \
                     WHERE symbol = 'DXY' AND volume >= $1",
                )
                .await
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (count, sum): (i64, i64) = if (n + t) % 2 == 0 {
                    let row = client.query_one(&stmt, &[&1000i64]).await.unwrap();
                    (row.get(0), row.get(1))
                } else {
                    let rows = client
                        .simple_query(
                            "SELECT count(*), sum(volume)::bigint FROM derived_data_bars \
                             WHERE symbol = 'DXY'",
                        )
                        .await
                        .unwrap();
                    let row = rows
                        .iter()
                        .find_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                            _ => None,
                        })
                        .unwrap();
                    (
                        row.get(0).unwrap().parse().unwrap(),
                        row.get(1).unwrap().parse().unwrap(),
                    )
                };
                assert_eq!(count, 20);
                assert_eq!(sum, 21_900);
                n += 1;
            }
            n
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut flips = 0;
    for source in ["shadow", "secondary", "primary"].iter().cycle() {
        if Instant::now() > deadline {
            break;
        }
        set_reads(&bridge, source);
        flips += 1;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("a reader failed");
    }
    assert!(flips >= 10, "{flips} flips");
    assert!(total > 100, "{total} reads");
    assert!(metric(&bridge, SERVED, "result=\"served\"") > 10.0);
    assert_eq!(status(&bridge)["divergences"]["total"], 0);
}

#[tokio::test]
async fn a_session_reads_its_own_writes() {
    let (bridge, db) = with_bars(
        "serve_ryw",
        cluster().secondary_port,
        3,
        "[reads]\nread_your_writes_ms = 300\n",
    )
    .await;
    set_reads(&bridge, "secondary");
    let writer = connect(&bridge.conn_str("postgres", "", &db)).await;
    let other = connect(&bridge.conn_str("postgres", "", &db)).await;
    let read = "SELECT close::text FROM derived_data_bars WHERE symbol = 'DXY' \
                AND ts = '2026-01-05 10:01+00'";
    let close = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, String>(0);
    assert_eq!(close(writer.query(read, &[]).await.unwrap()), "101.010000");
    // The applier stalls behind a lock on the target; reads still pass it.
    let blocker = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        cluster().secondary_port
    ))
    .await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE data_bars IN EXCLUSIVE MODE")
        .await
        .unwrap();
    writer
        .batch_execute("UPDATE derived_data_bars SET close = 42 WHERE ts = '2026-01-05 10:01+00'")
        .await
        .unwrap();
    // The writer sees its write (the secondary has not applied it: the primary serves it) ...
    assert_eq!(close(writer.query(read, &[]).await.unwrap()), "42.000000");
    assert!(metric(&bridge, SERVED, "result=\"read_your_writes\"") >= 1.0);
    // ... while another session is served by the secondary, which lags.
    assert_eq!(close(other.query(read, &[]).await.unwrap()), "101.010000");
    blocker.batch_execute("COMMIT").await.unwrap();
    wait_applied(&bridge);
    let served = metric(&bridge, SERVED, "result=\"served\"");
    assert_eq!(close(writer.query(read, &[]).await.unwrap()), "42.000000");
    assert_eq!(metric(&bridge, SERVED, "result=\"served\""), served + 1.0);
}

/// With reads of the table on the secondary for a share of the sessions, that share (within
/// statistical bounds) is served there, each session always by the same side; raising the
/// share keeps every session that was on the secondary there.
#[tokio::test]
async fn a_percent_ramp_sends_a_sticky_share_of_the_sessions_to_the_secondary() {
    let (bridge, db) = with_bars("serve_ramp", cluster().secondary_port, 5, "").await;
    // A value only the secondary holds tells which side answered.
    psql_on(
        cluster().secondary_port,
        &db,
        "UPDATE data_bars SET close_px = 777 WHERE ts = '2026-01-05 10:00+00'",
    );
    const SESSIONS: usize = 200;
    let mut clients = Vec::new();
    for _ in 0..SESSIONS {
        clients.push(connect(&bridge.conn_str("postgres", "", &db)).await);
    }
    set_reads_percent(&bridge, "secondary", 25);
    let first = sides(&clients).await;
    for _ in 0..2 {
        assert_eq!(sides(&clients).await, first, "a session changed sides");
    }
    let quarter = first.iter().filter(|&&s| s).count();
    // 25% of 200: 50, sd 6.1; four of them either way.
    assert!(
        (26..=74).contains(&quarter),
        "{quarter} of {SESSIONS} sessions on the secondary"
    );
    set_reads_percent(&bridge, "secondary", 50);
    let second = sides(&clients).await;
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        assert!(
            !a || *b,
            "session {i} left the secondary when the share was raised"
        );
    }
    let half = second.iter().filter(|&&s| s).count();
    assert!(
        (72..=128).contains(&half),
        "{half} of {SESSIONS} sessions on the secondary"
    );
    assert!(half > quarter);
    let status = status(&bridge);
    assert_eq!(status["tables"][0]["reads_percent"], 50);
    assert!(
        metric(&bridge, "pgbridge_reads_total", "side=\"secondary\"")
            >= (quarter * 3 + half) as f64
    );
    assert!(metric(&bridge, "pgbridge_reads_total", "side=\"primary\"") > 0.0);
}

/// Whether the secondary answered `client`'s read of the bar whose close only the secondary has.
async fn served_by_the_secondary(client: &tokio_postgres::Client) -> bool {
    let read =
        "SELECT close FROM derived_data_bars WHERE symbol = 'DXY' AND ts = '2026-01-05 10:00+00'";
    let rows = client.simple_query(read).await.unwrap();
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    value.as_deref() == Some("777.000000")
}

async fn sides(clients: &[tokio_postgres::Client]) -> Vec<bool> {
    futures_util::future::join_all(clients.iter().map(served_by_the_secondary)).await
}

/// A `SET` the session's transaction rolled back (explicitly, by an error in its Query, or by
/// a ROLLBACK TO SAVEPOINT) is not the session's setting: its reads on the secondary answer as
/// the primary would, and they are the secondary's.
#[tokio::test]
async fn settings_rolled_back_do_not_follow_reads_to_the_secondary() {
    let (bridge, db) = with_bars("serve_sets", cluster().secondary_port, 3, "").await;
    set_reads(&bridge, "secondary");
    let read = "SELECT close::float8 + 1 / 3::float8 FROM derived_data_bars WHERE symbol = 'DXY' AND ts = '2026-01-05 10:01+00'";
    let mut req = Vec::new();
    for sql in [
        "SET extra_float_digits = -2".to_string(),
        format!("BEGIN; SET extra_float_digits = 3; {read}; ROLLBACK"),
        read.to_string(),
        "SET extra_float_digits = 2; SELECT 1/0".to_string(),
        read.to_string(),
        format!("BEGIN; SET extra_float_digits = 1; SAVEPOINT s; SET extra_float_digits = 3; ROLLBACK TO s; {read}; COMMIT"),
        read.to_string(),
    ] {
        req.extend(wire::query(&sql));
    }
    let before = metric(&bridge, SERVED, "result=\"served\"");
    let via = exchange(bridge.port, &db, &req);
    let direct = exchange(cluster().primary_port, &db, &req);
    assert_eq!(
        String::from_utf8_lossy(&via),
        String::from_utf8_lossy(&direct),
        "the answers through pgbridge differ from the primary's"
    );
    // The three reads in Queries of their own were the secondary's.
    assert_eq!(metric(&bridge, SERVED, "result=\"served\"") - before, 3.0);
}

/// A read whose columns on the primary are no longer those the secondary answers with (the
/// source table altered through pgbridge, or behind its back) is the primary's: the client gets
/// the primary's columns, never a row description of the day before.
#[tokio::test]
async fn a_read_after_the_source_changed_its_columns_is_the_primarys() {
    let (bridge, db) = with_bars("serve_ddl", cluster().secondary_port, 3, "").await;
    set_reads(&bridge, "secondary");
    let read = "SELECT * FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts";
    let served = || metric(&bridge, SERVED, "result=\"served\"");
    let before = served();
    let first = exchange(bridge.port, &db, &wire::query(read));
    assert_eq!(served() - before, 1.0, "the first read is the secondary's");
    assert_eq!(
        first,
        exchange(cluster().primary_port, &db, &wire::query(read))
    );

    // Through pgbridge: the next read knows at once.
    let mut req = wire::query("ALTER TABLE derived_data_bars ADD COLUMN note text DEFAULT 'n'");
    req.extend(wire::query(read));
    let before = served();
    let via = exchange(bridge.port, &db, &req);
    let direct_read = exchange(cluster().primary_port, &db, &wire::query(read));
    assert!(
        via.ends_with(&direct_read),
        "after ALTER TABLE through pgbridge the read differs from the primary's"
    );
    assert_eq!(
        served() - before,
        0.0,
        "the secondary answered with old columns"
    );

    // Behind pgbridge's back: a session asks again once the description it keeps is stale.
    let primary = cluster().primary_port;
    psql_on(
        primary,
        &db,
        "ALTER TABLE derived_data_bars DROP COLUMN note",
    );
    let mut session = Wire::connect(bridge.port);
    session.startup("postgres", &db);
    // A simple read, and the same read as libpq's PQexecParams sends it (parsed each time).
    let simple = wire::query(read);
    let mut unnamed = wire::parse("", read, &[]);
    unnamed.extend(wire::bind("", "", 0, &[], 1));
    unnamed.extend(wire::describe(b'P', ""));
    unnamed.extend(wire::execute("", 0));
    unnamed.extend(wire::sync());
    let mut ask = |req: &[u8]| {
        let before = served();
        session.send(req);
        let got = wire::encode(&session.frames_until_ready(1));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&exchange(primary, &db, req)),
        );
        served() - before
    };
    assert_eq!(
        ask(&simple),
        1.0,
        "the columns match again: the secondary's"
    );
    // The first is described by the primary as it runs there; the second is served.
    assert_eq!(ask(&unnamed) + ask(&unnamed), 1.0);
    psql_on(
        primary,
        &db,
        "ALTER TABLE derived_data_bars ADD COLUMN extra int",
    );
    std::thread::sleep(Duration::from_secs(6));
    for req in [&simple, &unnamed, &simple, &unnamed] {
        assert_eq!(ask(req), 0.0, "a stale description was served");
    }
}

/// Simple-protocol reads of one shape are prepared once on the secondary and bound with each
/// read's literals; a shape the secondary will not prepare (a literal in a function of `"any"`)
/// goes with its literals. Either way the client gets the primary's bytes.
#[tokio::test]
async fn simple_reads_are_prepared_once_per_shape_on_the_secondary() {
    let (bridge, db) = with_bars("serve_bound", cluster().secondary_port, 10, "").await;
    set_reads(&bridge, "secondary");
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    let direct = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        cluster().primary_port
    ))
    .await;
    let text = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<Vec<Option<String>>> {
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect()
    };
    // What the secondary's session of pgbridge ran last.
    let last_on_secondary = || {
        psql_on(
            cluster().secondary_port,
            &db,
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND query LIKE '%data_bars%'",
        )
    };
    let served = || metric(&bridge, SERVED, "result=\"served\"");
    let before = served();
    for (minute, min_volume) in [(1, "0"), (4, "1000"), (7, "1069.5"), (9, "5000000000")] {
        let read = format!(
            "SELECT ts, close, volume FROM derived_data_bars WHERE symbol = 'DXY' \
             AND ts >= '2026-01-05 10:00+00'::timestamptz + {minute} * interval '1 minute' \
             AND volume > {min_volume} ORDER BY ts LIMIT 3"
        );
        let via = text(client.simple_query(&read).await.unwrap());
        assert_eq!(
            via,
            text(direct.simple_query(&read).await.unwrap()),
            "{read}"
        );
        let ran = last_on_secondary();
        assert!(
            ran.contains("$1") && ran.contains("$2") && !ran.contains("10:00+00"),
            "the secondary ran {ran}"
        );
    }
    assert_eq!(served() - before, 4.0, "every read was the secondary's");
    assert_eq!(
        text(client.simple_query(
            "SELECT count(*) FROM derived_data_bars WHERE symbol = 'DXY' AND volume > 1069.5"
        )
        .await
        .unwrap()),
        vec![vec![Some("3".to_string())]]
    );

    // concat's arguments are "any": PostgreSQL cannot type a parameter there, so the read goes
    // with its literals, as the client wrote them.
    for minute in ["10:02", "10:03"] {
        let read = format!(
            "SELECT concat(symbol, '/', volume) FROM derived_data_bars WHERE symbol = 'DXY' \
             AND ts = '2026-01-05 {minute}+00'"
        );
        let before = served();
        let via = text(client.simple_query(&read).await.unwrap());
        assert_eq!(via, text(direct.simple_query(&read).await.unwrap()));
        assert_eq!(served() - before, 1.0, "{read} was not the secondary's");
        let ran = last_on_secondary();
        assert!(
            ran.contains(minute) && !ran.contains("$1"),
            "the secondary ran {ran}"
        );
    }
    let s = status(&bridge);
    assert_eq!(s["divergences"]["total"], 0, "{s}");
}
