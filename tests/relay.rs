//! Transparency: what clients get through pgbridge equals what they get from the primary directly.
//!
//! Real clients (tokio-postgres; psql and pgbench through libpq; a raw wire client for exact
//! bytes) run the same work directly and through pgbridge, and the answers are compared.

mod common;

use std::process::Command;
use std::time::Duration;

use common::wire::{self, Wire};
use common::*;
use tokio_postgres::SimpleQueryMessage;

/// The rows and command tags of a simple query, as comparable text.
async fn simple(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    for msg in client.simple_query(sql).await.unwrap() {
        match msg {
            SimpleQueryMessage::Row(row) => {
                let cols: Vec<String> = (0..row.len())
                    .map(|i| row.get(i).map_or("NULL".to_string(), str::to_string))
                    .collect();
                out.push(format!("row {}", cols.join("|")));
            }
            SimpleQueryMessage::CommandComplete(n) => out.push(format!("complete {n}")),
            SimpleQueryMessage::RowDescription(d) => {
                let names: Vec<&str> = d.iter().map(|c| c.name()).collect();
                out.push(format!("columns {}", names.join(",")));
            }
            _ => out.push("other".into()),
        }
    }
    out
}

#[tokio::test]
async fn every_auth_method_authenticates_through_the_primary() {
    let bridge = Bridge::start("");
    for (user, password, method) in AUTH_USERS {
        let client = connect(&bridge.conn_str(user, password, "postgres")).await;
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user, "{method}");

        // libpq too.
        let out = Command::new("psql")
            .args(["-X", "-At", "-c", "SELECT current_user"])
            .arg(bridge.conn_str(user, password, "postgres"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {method}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), user);
    }
}

#[tokio::test]
async fn a_wrong_password_is_rejected_exactly_as_the_primary_rejects_it() {
    let bridge = Bridge::start("");
    for (user, _, method) in AUTH_USERS.iter().filter(|u| u.2 != "trust") {
        let via = tokio_postgres::connect(
            &bridge.conn_str(user, "wrong", "postgres"),
            tokio_postgres::NoTls,
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{method}: a wrong password was accepted"));
        let direct =
            tokio_postgres::connect(&direct(user, "wrong", "postgres"), tokio_postgres::NoTls)
                .await
                .err()
                .unwrap();
        let (via, direct) = (via.as_db_error().unwrap(), direct.as_db_error().unwrap());
        assert_eq!(via.code().code(), "28P01", "{method}");
        assert_eq!(via.code(), direct.code(), "{method}");
        assert_eq!(via.message(), direct.message(), "{method}");
    }
}

#[tokio::test]
async fn several_statements_in_one_query_match_direct() {
    let bridge = Bridge::start("");
    let db = fresh_db("multi");
    let sql = "CREATE TABLE t (id int PRIMARY KEY, v text); \
               INSERT INTO t VALUES (1, 'a'), (2, NULL); \
               SELECT * FROM t ORDER BY id; UPDATE t SET v = 'b' WHERE id = 2; \
               SELECT count(*), 'x' AS lit FROM t; DROP TABLE t";
    let via = simple(&connect(&bridge.conn_str("postgres", "", &db)).await, sql).await;
    let direct = simple(&connect(&direct("postgres", "", &db)).await, sql).await;
    assert_eq!(via, direct);
    assert!(
        via.contains(&"row 2|b".to_string()) || via.contains(&"row 2|x".to_string()),
        "{via:?}"
    );
}

/// Connects a raw client to `port` and runs `requests` after the startup; returns the reply bytes
/// up to `readies` ReadyForQuery.
fn raw_exchange(port: u16, db: &str, requests: &[u8], readies: usize) -> Vec<u8> {
    let mut w = Wire::connect(port);
    let startup = w.startup("postgres", db);
    assert_eq!(startup.last().unwrap().0, b'Z');
    w.send(requests);
    let reply = wire::encode(&w.frames_until_ready(readies));
    w.send(&wire::terminate());
    reply
}

#[test]
fn a_pipelined_extended_protocol_exchange_is_byte_identical() {
    let bridge = Bridge::start("");
    let db = fresh_db("pipeline");
    psql_on(
        cluster().primary_port,
        &db,
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), \
         seen timestamptz, data bytea, tags text[]); \
         INSERT INTO items SELECT g, 'item ' || g, g * 1.25, '2026-01-01'::timestamptz + g * interval '1 hour', \
         decode(md5(g::text), 'hex'), ARRAY['a', g::text] FROM generate_series(1, 50) g",
    );
    let mut req = Vec::new();
    // A named statement, described, bound twice with text and binary results, partially executed.
    req.extend(wire::parse(
        "s1",
        "SELECT * FROM items WHERE id <= $1 ORDER BY id",
        &[23],
    ));
    req.extend(wire::describe(b'S', "s1"));
    req.extend(wire::bind("p1", "s1", 0, &[Some(b"10")], 1));
    req.extend(wire::describe(b'P', "p1"));
    req.extend(wire::execute("p1", 3));
    req.extend(wire::flush());
    req.extend(wire::execute("p1", 0));
    req.extend(wire::close(b'P', "p1"));
    req.extend(wire::bind("", "s1", 1, &[Some(&7i32.to_be_bytes())], 0));
    req.extend(wire::execute("", 0));
    req.extend(wire::sync());
    // An error in the middle of a pipeline: the rest up to Sync is skipped by the server.
    req.extend(wire::parse("", "SELECT 1 / $1::int", &[]));
    req.extend(wire::bind("", "", 0, &[Some(b"0")], 0));
    req.extend(wire::execute("", 0));
    req.extend(wire::parse("", "SELECT 'skipped'", &[]));
    req.extend(wire::sync());
    // Recovery, then a write with RETURNING and a NULL parameter.
    req.extend(wire::parse(
        "ins",
        "INSERT INTO items (id, name) VALUES ($1, $2) RETURNING id, name",
        &[],
    ));
    req.extend(wire::bind("", "ins", 0, &[Some(b"1000"), None], 0));
    req.extend(wire::execute("", 0));
    req.extend(wire::close(b'S', "ins"));
    req.extend(wire::close(b'S', "s1"));
    req.extend(wire::sync());
    req.extend(wire::query(
        "SELECT count(*) FROM items; DELETE FROM items WHERE id = 1000",
    ));

    let via = raw_exchange(bridge.port, &db, &req, 4);
    let direct = raw_exchange(cluster().primary_port, &db, &req, 4);
    assert!(via.len() > 2000, "a real exchange: {} bytes", via.len());
    assert_eq!(
        via, direct,
        "the reply bytes through pgbridge differ from the primary's"
    );
    // The error reached the client: 22012 division_by_zero.
    assert!(via.windows(6).any(|w| w == b"C22012"));
}

#[test]
fn parameter_status_and_a_usable_backend_key_reach_the_client() {
    let bridge = Bridge::start("");
    let mut via = Wire::connect(bridge.port);
    let via_frames = via.startup("postgres", "postgres");
    let mut direct = Wire::connect(cluster().primary_port);
    let direct_frames = direct.startup("postgres", "postgres");
    let status = |frames: &[wire::Frame]| -> Vec<Vec<u8>> {
        frames
            .iter()
            .filter(|f| f.0 == b'S')
            .map(|f| f.1.clone())
            .collect()
    };
    assert!(status(&via_frames).len() >= 10);
    assert_eq!(status(&via_frames), status(&direct_frames));
    let key = |frames: &[wire::Frame]| frames.iter().find(|f| f.0 == b'K').unwrap().1.clone();
    let via_key = key(&via_frames);
    assert_eq!(via_key.len(), 8);
    // The key carries the primary's own process id (PQbackendPID() means what it means
    // directly); its secret is pgbridge's, which the cancel tests show reaches the backend.
    via.send(&wire::query("SELECT pg_backend_pid()"));
    let frames = via.frames_until_ready(1);
    let row = frames.iter().find(|f| f.0 == b'D').unwrap();
    let pid: i32 = String::from_utf8_lossy(&row.1[6..]).parse().unwrap();
    assert_eq!(i32::from_be_bytes(via_key[..4].try_into().unwrap()), pid);
}

#[test]
fn protocol_version_negotiation_passes_through() {
    let bridge = Bridge::start("");
    let packet = wire::startup_packet(
        (3, 7),
        &[
            ("user", "postgres"),
            ("database", "postgres"),
            ("_pq_.pgbridge_test", "1"),
        ],
    );
    let first = |port| {
        let mut w = Wire::connect(port);
        w.send(&packet);
        w.frame().unwrap()
    };
    let via = first(bridge.port);
    assert_eq!(via.0, b'v', "NegotiateProtocolVersion");
    assert_eq!(via, first(cluster().primary_port));
}

#[test]
fn gssenc_is_refused_and_the_startup_goes_on() {
    let bridge = Bridge::start("");
    let mut w = Wire::connect(bridge.port);
    w.send(&wire::request_packet(80877104));
    let mut answer = [0u8; 1];
    std::io::Read::read_exact(&mut w.stream, &mut answer).unwrap();
    assert_eq!(&answer, b"N");
    let frames = w.startup("postgres", "postgres");
    assert_eq!(frames.last().unwrap().0, b'Z');
}

#[test]
fn psql_sees_the_same_output_as_direct() {
    let bridge = Bridge::start("");
    let db = fresh_db("psql");
    let script = r#"
\set ON_ERROR_STOP 0
CREATE TABLE bars (symbol text, ts timestamptz, close numeric, PRIMARY KEY (symbol, ts));
INSERT INTO bars SELECT 'DXY', '2026-01-01'::timestamptz + g * interval '1 min', 100 + g / 10.0 FROM generate_series(1, 20) g;
SELECT symbol, count(*), sum(close) FROM bars GROUP BY symbol; SELECT 1 AS a, 'two' AS b;
\copy bars FROM stdin
EURUSD	2026-01-01 00:00:00+00	1.1
EURUSD	2026-01-01 00:01:00+00	1.2
\.
COPY (SELECT * FROM bars WHERE symbol = 'EURUSD' ORDER BY ts) TO STDOUT WITH (FORMAT csv, HEADER);
\copy (SELECT symbol, close FROM bars ORDER BY ts, symbol LIMIT 3) TO stdout
SELECT 1 / 0;
BEGIN;
INSERT INTO bars VALUES ('X', now(), 1);
SELECT no_such_column FROM bars;
SELECT 1;
ROLLBACK;
SELECT count(*) FROM bars WHERE symbol = 'X';
DO $$ BEGIN RAISE NOTICE 'a notice with %', 42; RAISE WARNING 'and a warning'; END $$;
LISTEN ch;
NOTIFY ch, 'hello';
SELECT pg_notify('ch', 'again');
PREPARE q(text) AS SELECT count(*) FROM bars WHERE symbol = $1;
EXECUTE q('DXY');
DEALLOCATE q;
SELECT repeat('x', 100000) = repeat('x', 100000) AS big, length(repeat('y', 200000));
SET application_name = 'changed';
SHOW application_name;
SELECT current_setting('DateStyle'), current_setting('TimeZone') IS NOT NULL;
"#;
    let normalize = |s: String| {
        s.lines()
            .map(|l| match l.find("server process with PID") {
                Some(i) => l[..i].to_string(),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // The same script on two fresh databases: one through pgbridge, one direct.
    let other = fresh_db("psql_direct");
    let (via, via_code) = psql_script(&bridge.conn_str("postgres", "", &db), script);
    let (direct, direct_code) = psql_script(&direct("postgres", "", &other), script);
    let (via, direct) = (normalize(via), normalize(direct));
    assert_eq!(via_code, direct_code);
    assert!(via.contains("a notice with 42"), "{via}");
    assert!(
        via.contains("Asynchronous notification \"ch\" with payload \"hello\""),
        "{via}"
    );
    assert!(via.contains("22012"), "{via}");
    assert!(via.contains("symbol,ts,close"), "{via}");
    assert_eq!(via, direct);
}

#[tokio::test]
async fn copy_in_and_out_match_direct() {
    use futures_util::{SinkExt, TryStreamExt};
    let bridge = Bridge::start("");
    let db = fresh_db("copy");
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    client
        .batch_execute("CREATE TABLE c (id int, v text)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..20_000 {
        data.push_str(&format!("{i}\tvalue {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 20_000);
    let read = |client: tokio_postgres::Client| async move {
        let stream = client.copy_out("COPY c TO STDOUT").await.unwrap();
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
        chunks.concat()
    };
    let via = read(client).await;
    let direct = read(connect(&direct("postgres", "", &db)).await).await;
    assert_eq!(via, direct);
    assert_eq!(via, data.as_bytes());
}

#[tokio::test]
async fn notices_and_notifications_reach_the_client() {
    let bridge = Bridge::start("");
    let (listener, mut messages) =
        connect_with_messages(&bridge.conn_str("postgres", "", "postgres")).await;
    listener.batch_execute("LISTEN pgbridge_ch").await.unwrap();
    listener
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; END $$")
        .await
        .unwrap();
    let notifier = connect(&direct("postgres", "", "postgres")).await;
    notifier
        .batch_execute("NOTIFY pgbridge_ch, 'payload 1'")
        .await
        .unwrap();
    let mut notice = None;
    let mut notification = None;
    while notice.is_none() || notification.is_none() {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.recv())
            .await
            .expect("a message within 10 s")
            .unwrap();
        match msg {
            tokio_postgres::AsyncMessage::Notice(n) => notice = Some(n.message().to_string()),
            tokio_postgres::AsyncMessage::Notification(n) => {
                notification = Some((n.channel().to_string(), n.payload().to_string()))
            }
            _ => {}
        }
    }
    assert_eq!(notice.unwrap(), "hello from plpgsql");
    assert_eq!(
        notification.unwrap(),
        ("pgbridge_ch".to_string(), "payload 1".to_string())
    );
}

#[tokio::test]
async fn errors_are_relayed_and_the_session_recovers() {
    let bridge = Bridge::start("");
    let client = connect(&bridge.conn_str("postgres", "", "postgres")).await;
    let err = client.query("SELECT 1 / 0", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");
    client.batch_execute("BEGIN").await.unwrap();
    let err = client
        .query("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01");
    let err = client.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "25P02");
    client.batch_execute("ROLLBACK").await.unwrap();
    let row = client.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[tokio::test]
async fn binary_results_of_many_types_match_direct() {
    let bridge = Bridge::start("");
    let sql = "SELECT 1::int2, 2::int4, 3::int8, 1.5::float4, 2.25::float8, 'text'::text, \
               true, '\\xdeadbeef'::bytea, '2026-11-22 10:00:00+00'::timestamptz, \
               '2026-11-22'::date, ARRAY[1, 2, 3], '{\"a\": 1}'::jsonb::text, \
               gen_random_uuid() IS NOT NULL, NULL::int";
    let rows = |client: tokio_postgres::Client| async move {
        let stmt = client.prepare(sql).await.unwrap();
        let row = client.query_one(&stmt, &[]).await.unwrap();
        let types: Vec<String> = stmt
            .columns()
            .iter()
            .map(|c| c.type_().name().to_string())
            .collect();
        (
            types,
            row.get::<_, i16>(0),
            row.get::<_, i64>(2),
            row.get::<_, f64>(4),
            row.get::<_, Vec<u8>>(7),
            row.get::<_, std::time::SystemTime>(8),
            row.get::<_, Vec<i32>>(10),
            row.get::<_, Option<i32>>(13),
        )
    };
    let via = rows(connect(&bridge.conn_str("postgres", "", "postgres")).await).await;
    let direct = rows(connect(&direct("postgres", "", "postgres")).await).await;
    assert_eq!(via, direct);
    assert_eq!(via.4, vec![0xde, 0xad, 0xbe, 0xef]);
}

#[tokio::test]
async fn a_100_mb_bytea_goes_in_and_out_without_being_held_whole() {
    let bridge = Bridge::start("");
    let db = fresh_db("big");
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    client
        .batch_execute(
            "CREATE TABLE blobs (id int, b bytea); ALTER TABLE blobs ALTER b SET STORAGE EXTERNAL",
        )
        .await
        .unwrap();
    let mut value = vec![0u8; 100 * 1024 * 1024];
    let mut x: u32 = 12345;
    for b in value.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 24) as u8;
    }
    client
        .execute("INSERT INTO blobs VALUES (1, $1)", &[&value])
        .await
        .unwrap();
    let row = client
        .query_one("SELECT b FROM blobs WHERE id = 1", &[])
        .await
        .unwrap();
    let back: Vec<u8> = row.get(0);
    assert!(back == value, "the value came back changed");
    let text_len: i64 = client
        .query_one("SELECT length(encode(b, 'hex'))::int8 FROM blobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(text_len, 200 * 1024 * 1024);
    // The relay streams large frames: its peak memory stays far below one copy of the value.
    let peak = bridge.peak_rss();
    assert!(
        peak < 60 * 1024 * 1024,
        "pgbridge peaked at {} MiB",
        peak / (1024 * 1024)
    );
}

#[tokio::test]
async fn a_cancel_request_cancels_the_right_query() {
    let bridge = Bridge::start("");
    let victim = connect(&bridge.conn_str("postgres", "", "postgres")).await;
    let bystander = connect(&bridge.conn_str("postgres", "", "postgres")).await;
    let token = victim.cancel_token();
    let running = tokio::spawn(async move { victim.query("SELECT pg_sleep(30)", &[]).await });
    let other =
        tokio::spawn(async move { bystander.query_one("SELECT pg_sleep(1.5), 7", &[]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014", "query_canceled");
    assert!(started.elapsed() < Duration::from_secs(5));
    let row = other.await.unwrap().unwrap();
    assert_eq!(
        row.get::<_, i32>(1),
        7,
        "the other session's query was not cancelled"
    );
}

#[test]
fn a_cancel_with_an_unknown_key_cancels_nothing() {
    let bridge = Bridge::start("");
    let mut w = Wire::connect(bridge.port);
    w.startup("postgres", "postgres");
    w.send(&wire::query("SELECT pg_sleep(1), 'done'"));
    let mut cancel = 16u32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&80877102u32.to_be_bytes());
    cancel.extend_from_slice(&[0, 0, 0, 1, 9, 9, 9, 9]);
    let mut c = Wire::connect(bridge.port);
    c.send(&cancel);
    assert!(c.read_to_end().is_empty());
    let frames = w.frames_until_ready(1);
    assert!(
        frames.iter().any(|f| f.0 == b'D'),
        "the query completed: {frames:?}"
    );
}

#[test]
fn pgbench_runs_through_pgbridge_in_every_query_mode() {
    let bridge = Bridge::start("");
    let db = fresh_db("pgbench");
    let conn = ["-h", "127.0.0.1", "-U", "postgres"];
    let port = bridge.port.to_string();
    let init = Command::new("pgbench")
        .args(conn)
        .args(["-p", &port, "-i", "-s", "1", "-q", &db])
        .output()
        .expect("pgbench is installed (apt-get install postgresql-client-15)");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for mode in ["simple", "extended", "prepared"] {
        let out = Command::new("pgbench")
            .args(conn)
            .args([
                "-p", &port, "-c", "4", "-j", "2", "-t", "100", "-M", mode, &db,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("number of transactions actually processed: 400/400"),
            "{mode}: {text}"
        );
    }
    // Each run starts by emptying the history; the last run's transactions are all there.
    let history = psql_on(
        cluster().primary_port,
        &db,
        "SELECT count(*) FROM pgbench_history",
    );
    assert_eq!(history.trim(), "400");
}

#[tokio::test]
async fn a_primary_on_a_unix_socket_is_relayed_and_cancelled_too() {
    let socket_dir = lock(&cluster().primary).dir().to_path_buf();
    let port = pgbridge::pgcluster::free_port().unwrap();
    let admin = pgbridge::pgcluster::free_port().unwrap();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         [primary]\nurl = \"host={} port={} user=postgres dbname=postgres\"\n",
        socket_dir.display(),
        cluster().primary_port
    );
    let bridge = Bridge::start_with_config(port, admin, &config);
    let client = connect(&bridge.conn_str("postgres", "", "postgres")).await;
    let row = client
        .query_one("SELECT inet_client_addr() IS NULL AS over_unix_socket", &[])
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "the primary saw a Unix-socket client"
    );
    let token = client.cancel_token();
    let running = tokio::spawn(async move { client.query("SELECT pg_sleep(30)", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014");
}

/// The names of the threads of process `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

#[tokio::test]
async fn sessions_spread_over_session_threads_relay_cancel_and_drain() {
    let port = pgbridge::pgcluster::free_port().unwrap();
    let admin_port = pgbridge::pgcluster::free_port().unwrap();
    let config = format!(
        "worker_threads = 3\n{}",
        default_config(port, admin_port, cluster().primary_port)
    );
    let bridge = Bridge::start_with_config(port, admin_port, &config);

    // Twelve sessions at once, each on whichever thread took it: every one gets its own answers.
    let conn = bridge.conn_str("postgres", "", "postgres");
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(connect(&conn).await);
    }
    // Sessions are being served, so the accept loop has started its threads.
    let names = thread_names(bridge.pid());
    let sessions = names.iter().filter(|n| n.starts_with("session-")).count();
    assert_eq!(sessions, 3, "three session threads: {names:?}");

    let mut runs = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let i = i as i64;
        runs.push(async move {
            let mut sum = 0;
            for k in 0..50i64 {
                let row = client
                    .query_one("SELECT $1::int8 * 1000 + $2::int8", &[&i, &k])
                    .await;
                sum += row.unwrap().get::<_, i64>(0);
            }
            sum
        });
    }
    let sums = futures_util::future::join_all(runs).await;
    for (i, sum) in sums.into_iter().enumerate() {
        let i = i as i64;
        assert_eq!(sum, 50 * 1000 * i + 49 * 50 / 2, "session {i}");
    }

    // A cancel request (a connection of its own, on any thread) reaches the query of another.
    let victim = clients.pop().unwrap();
    let token = victim.cancel_token();
    let running = tokio::spawn(async move { victim.query("SELECT pg_sleep(30)", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014", "query_canceled");

    // SIGTERM drains the idle sessions of every thread, and pgbridge exits.
    let mut bridge = bridge;
    bridge.signal(libc::SIGTERM);
    let status = bridge.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit: {status:?}, log: {}",
        bridge.log()
    );
    for client in &clients {
        let err = client.simple_query("SELECT 1").await.unwrap_err();
        assert!(err.is_closed() || err.code().is_some(), "{err}");
    }
}
