//! Faults: a primary that is down or goes away, clients that vanish or send garbage, limits,
//! SIGTERM, bad configs. Each test proves with what the client and the primary see that pgbridge
//! ended only what it had to and kept serving the rest.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::wire::{self, Wire};
use common::*;

fn db_code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

#[tokio::test]
async fn an_unreachable_primary_gives_08006_and_pgbridge_serves_once_it_is_back() {
    let mut server = start_server();
    let bridge = Bridge::start_for(server.port(), "");
    server.stop().unwrap();
    let err = tokio_postgres::connect(
        &bridge.conn_str("postgres", "", "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("no primary, no session");
    assert_eq!(db_code(&err), "08006");
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("could not connect to the primary"),
        "{message}"
    );
    server.start_again().unwrap();
    let client = connect(&bridge.conn_str("postgres", "", "postgres")).await;
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[test]
fn a_terminated_backend_reaches_the_client_with_the_primarys_own_error() {
    let bridge = Bridge::start("");
    let mut w = Wire::connect(bridge.port);
    w.startup("postgres", "postgres");
    w.send(&wire::query("SELECT pg_backend_pid()"));
    let frames = w.frames_until_ready(1);
    let row = frames.iter().find(|f| f.0 == b'D').unwrap();
    let pid = String::from_utf8_lossy(&row.1[6..]).to_string();
    psql_on(
        cluster().primary_port,
        "postgres",
        &format!("SELECT pg_terminate_backend({pid})"),
    );
    let (tag, body) = w.frame().expect("an error before the end");
    assert_eq!(tag, b'E');
    assert_eq!(
        wire::sqlstate(&body),
        "57P01",
        "admin_shutdown, the primary's own"
    );
    assert!(w.frame().is_none(), "then the connection closes");
    // Others are served as before.
    let mut other = Wire::connect(bridge.port);
    assert_eq!(
        other.startup("postgres", "postgres").last().unwrap().0,
        b'Z'
    );
}

#[test]
fn a_primary_that_dies_without_a_word_gives_08006() {
    let server = start_server();
    let bridge = Bridge::start_for(server.port(), "");
    let mut w = Wire::connect(bridge.port);
    w.startup("postgres", "postgres");
    w.send(&wire::query("SELECT pg_backend_pid()"));
    let frames = w.frames_until_ready(1);
    let row = frames.iter().find(|f| f.0 == b'D').unwrap();
    let pid: i32 = String::from_utf8_lossy(&row.1[6..]).parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let (tag, body) = w.frame().expect("an error before the end");
    assert_eq!(tag, b'E');
    assert_eq!(wire::sqlstate(&body), "08006");
    assert!(wire::field(&body, b'M').contains("connection to the primary was lost"));
    assert!(w.frame().is_none());
}

/// Active backends on the shared primary running a query containing `marker`.
fn backends_running(marker: &str) -> usize {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{marker}%' \
         AND pid <> pg_backend_pid()"
    );
    psql_on(cluster().primary_port, "postgres", &sql)
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_client_vanishing_mid_query_releases_its_backend() {
    let bridge = Bridge::start("");
    let mut w = Wire::connect(bridge.port);
    w.startup("postgres", "postgres");
    w.send(&wire::query("SELECT pg_sleep(60) /* vanishing-client */"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while backends_running("vanishing-client") == 0 {
        assert!(Instant::now() < deadline, "the query never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(5);
    while backends_running("vanishing-client") > 0 {
        assert!(
            Instant::now() < deadline,
            "the backend still runs the abandoned query"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn garbage_from_a_client_closes_that_session_only() {
    let bridge = Bridge::start("");
    let bystander = connect(&bridge.conn_str("postgres", "", "postgres")).await;

    // Garbage after the startup: an unknown message type.
    let mut w = Wire::connect(bridge.port);
    w.startup("postgres", "postgres");
    w.send(b"\x01\x00\x00\x00\x08garbage!");
    let (tag, body) = w.frame().expect("an error");
    assert_eq!(tag, b'E');
    assert_eq!(wire::sqlstate(&body), "08P01");
    assert!(
        wire::field(&body, b'M').contains("invalid frontend message type"),
        "{body:?}"
    );
    assert!(w.frame().is_none());

    // Garbage instead of a startup packet.
    let mut w = Wire::connect(bridge.port);
    w.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let (tag, body) = w.frame().expect("an error");
    assert_eq!(tag, b'E');
    assert_eq!(wire::sqlstate(&body), "08P01");
    assert!(w.frame().is_none());

    // A frame length that cannot be.
    let mut w = Wire::connect(bridge.port);
    w.startup("postgres", "postgres");
    w.send(b"Q\x00\x00\x00\x02");
    let (_, body) = w.frame().expect("an error");
    assert_eq!(wire::sqlstate(&body), "08P01");

    // The bystander, and pgbridge, carry on.
    let row = bystander.query_one("SELECT 5", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 5);
    let mut fresh = Wire::connect(bridge.port);
    assert_eq!(
        fresh.startup("postgres", "postgres").last().unwrap().0,
        b'Z'
    );
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_with_54000() {
    let bridge = Bridge::start("[limits]\nmax_message_bytes = 10000\n");
    let client = connect(&bridge.conn_str("postgres", "", "postgres")).await;
    let small = client
        .query_one(&format!("SELECT length('{}')", "x".repeat(5000)), &[])
        .await
        .unwrap();
    assert_eq!(small.get::<_, i32>(0), 5000);
    let err = client
        .query_one(&format!("SELECT length('{}')", "x".repeat(20000)), &[])
        .await
        .unwrap_err();
    assert_eq!(db_code(&err), "54000");
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("max_message_bytes"), "{message}");
    let other = connect(&bridge.conn_str("postgres", "", "postgres")).await;
    assert_eq!(
        other
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn the_connection_limit_refuses_with_53300() {
    let bridge = Bridge::start("[limits]\nmax_client_connections = 2\n");
    let a = connect(&bridge.conn_str("postgres", "", "postgres")).await;
    let b = connect(&bridge.conn_str("postgres", "", "postgres")).await;
    let err = tokio_postgres::connect(
        &bridge.conn_str("postgres", "", "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("a third session is refused");
    assert_eq!(db_code(&err), "53300");
    drop(a);
    // The slot frees when the session ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio_postgres::connect(
            &bridge.conn_str("postgres", "", "postgres"),
            tokio_postgres::NoTls,
        )
        .await
        {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "never admitted again: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        b.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0),
        2
    );
}

#[tokio::test]
async fn sigterm_drains_sessions_at_their_next_idle_point() {
    let mut bridge = Bridge::start("[limits]\nshutdown_timeout_secs = 20\n");
    let db = fresh_db("drain");
    psql_on(cluster().primary_port, &db, "CREATE TABLE t (id int)");
    let idle = connect(&bridge.conn_str("postgres", "", &db)).await;
    let in_tx = connect(&bridge.conn_str("postgres", "", &db)).await;
    in_tx
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let busy = connect(&bridge.conn_str("postgres", "", &db)).await;
    let running =
        tokio::spawn(async move { busy.query_one("SELECT pg_sleep(1), 'finished'", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    bridge.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new sessions.
    assert!(
        tokio_postgres::connect(&bridge.conn_str("postgres", "", &db), tokio_postgres::NoTls)
            .await
            .is_err()
    );
    // The idle session was closed.
    assert!(idle.query_one("SELECT 1", &[]).await.is_err());
    // The session in a transaction finishes it.
    in_tx
        .batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .unwrap();
    // The running query completes.
    let row = running.await.unwrap().expect("the running query completes");
    assert_eq!(row.get::<_, String>(1), "finished");
    let status = bridge
        .wait_exit(Duration::from_secs(10))
        .expect("pgbridge exits once drained");
    assert!(status.success(), "{status}");
    let rows = psql_on(
        cluster().primary_port,
        &db,
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM t",
    );
    assert_eq!(rows.trim(), "1,2");
}

#[test]
fn the_drain_timeout_closes_busy_sessions_and_releases_their_backends() {
    let mut bridge = Bridge::start("[limits]\nshutdown_timeout_secs = 1\n");
    let mut w = Wire::connect(bridge.port);
    w.startup("postgres", "postgres");
    w.send(&wire::query("SELECT pg_sleep(60) /* drain-timeout */"));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    bridge.signal(libc::SIGTERM);
    let (tag, body) = w.frame().expect("an error");
    assert_eq!(tag, b'E');
    assert_eq!(wire::sqlstate(&body), "57P01");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(bridge.wait_exit(Duration::from_secs(5)).is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    while backends_running("drain-timeout") > 0 {
        assert!(
            Instant::now() < deadline,
            "the backend still runs the query"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bad_config_exits_1_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:6432\"\n[primary]\nurl = \"postgres://h/db\"\nmax_conns = 3\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:4:1: primary.max_conns", path.display()))
            || err.contains("bad.toml:4:1:"),
        "{err}"
    );
    assert!(err.contains("max_conns"), "{err}");
}

#[tokio::test]
async fn metrics_count_sessions_and_bytes() {
    let bridge = Bridge::start("");
    let client = connect(&bridge.conn_str("postgres", "", "postgres")).await;
    client
        .query_one("SELECT repeat('z', 10000)", &[])
        .await
        .unwrap();
    let (code, body) = bridge.admin_get("/metrics");
    assert_eq!(code, 200);
    // `name` or `name{label="v"}`: whatever other labels the line has (the instance's).
    let value = |name: &str| -> f64 {
        let (metric, label) = match name.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (name, ""),
        };
        body.lines()
            .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
            .find(|l| l.contains(label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{body}"))
    };
    assert!(value("pgbridge_client_connections_total") >= 1.0);
    assert_eq!(value("pgbridge_client_sessions"), 1.0);
    assert!(value("pgbridge_relayed_bytes_total{direction=\"to_client\"}") > 10000.0);
    assert!(value("pgbridge_relayed_bytes_total{direction=\"to_primary\"}") > 20.0);
}

#[test]
fn ctl_status_reports_a_running_proxy_and_exits_2_when_none_runs() {
    let bridge = Bridge::start("");
    let _session = {
        let mut w = Wire::connect(bridge.port);
        w.startup("postgres", "postgres");
        w
    };
    let ctl = |admin: &str| {
        Command::new(env!("CARGO_BIN_EXE_pgbridge"))
            .args(["ctl", "--admin", admin, "status"])
            .output()
            .unwrap()
    };
    let out = ctl(&format!("http://127.0.0.1:{}", bridge.admin_port));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sessions: 1"));
    let port = pgbridge::pgcluster::free_port().unwrap();
    let out = ctl(&format!("http://127.0.0.1:{port}"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
}

#[test]
fn tls_is_terminated_for_every_auth_method_and_refused_when_not_configured() {
    let tls = TlsFiles::new();
    let bridge = Bridge::start(&tls.config);
    for (user, password, method) in AUTH_USERS {
        let conn = format!(
            "{} sslmode=require",
            bridge.conn_str(user, password, "postgres")
        );
        let out = Command::new("psql")
            .args(["-X", "-c", "\\conninfo", "-c", "SELECT current_user"])
            .arg(&conn)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("SSL connection (protocol: TLSv1.3"),
            "{method}: {text}"
        );
        assert!(text.contains(user), "{method}: {text}");
    }
    // Without [tls], sslmode=require fails as against a server without SSL.
    let plain = Bridge::start("");
    let out = Command::new("psql")
        .args(["-X", "-c", "SELECT 1"])
        .arg(format!(
            "{} sslmode=require",
            plain.conn_str("postgres", "", "postgres")
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server does not support SSL"));
    // sslmode=prefer falls back to plain text.
    let out = Command::new("psql")
        .args(["-X", "-At", "-c", "SELECT 1"])
        .arg(format!(
            "{} sslmode=prefer",
            plain.conn_str("postgres", "", "postgres")
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[tokio::test]
async fn direct_tls_with_alpn_postgresql_is_accepted() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = TlsFiles::new();
    let bridge = Bridge::start(&tls.config);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.cert_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", bridge.port))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut stream = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("a direct TLS handshake");
    let startup = wire::startup_packet((3, 0), &[("user", "postgres"), ("database", "postgres")]);
    stream.write_all(&startup).await.unwrap();
    stream
        .write_all(&wire::query("SELECT 'over direct tls'"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut readies = 0;
    while readies < 2 {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await.unwrap();
        let len = u32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await.unwrap();
        if header[0] == b'Z' {
            readies += 1;
        }
        seen.push((header[0], body));
    }
    let row = seen.iter().find(|f| f.0 == b'D').expect("a row");
    assert!(String::from_utf8_lossy(&row.1).contains("over direct tls"));
}
