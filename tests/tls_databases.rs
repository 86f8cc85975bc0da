//! TLS to the databases, against real servers that accept `hostssl` connections only, with
//! certificates from a CA the test makes: pgbridge relays, mirrors, serves reads and cancels
//! over verified TLS; `require` works without a root certificate; `disable`, a wrong CA and a
//! certificate for another host are refused with clear errors, by `serve` at startup too; a
//! client certificate authenticates pgbridge's sessions; SCRAM passes through without channel
//! binding; a primary on a Unix-domain socket is plain for every connection.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::dxy::*;
use common::tls_pg::*;
use common::*;
use pgbridge::pgcluster::{free_port, PgServer};

const SERVED: &str = "pgbridge_secondary_reads_total";

/// The servers of this test binary: a primary and a secondary with certificates for
/// 127.0.0.1, and a server whose certificate is for db.example, with SCRAM passwords.
struct Servers {
    pki: Pki,
    primary: PgServer,
    secondary: PgServer,
    /// Certificate for db.example; `scram-sha-256` for everyone.
    misnamed: PgServer,
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let pki = Pki::new();
        let pair_hba = [
            "hostssl all u_cert 127.0.0.1/32 cert",
            "hostssl all all 127.0.0.1/32 trust",
        ];
        let names = ["127.0.0.1", "localhost"];
        let primary = tls_server(&pki, "primary", &names, &pair_hba, &[]);
        psql_local(&primary, "postgres", "CREATE ROLE u_cert LOGIN");
        let secondary = tls_server(&pki, "secondary", &names, &pair_hba, &[]);
        let scram = [("password_encryption", "'scram-sha-256'")];
        let hba = ["hostssl all all 127.0.0.1/32 scram-sha-256"];
        let misnamed = tls_server(&pki, "misnamed", &["db.example"], &hba, &scram);
        psql_local(
            &misnamed,
            "postgres",
            "CREATE ROLE u_scram LOGIN PASSWORD 'pw-scram'",
        );
        Servers {
            pki,
            primary,
            secondary,
            misnamed,
        }
    })
}

/// `sslmode=verify-full` with the test's CA.
fn verify_full() -> String {
    format!(
        "sslmode=verify-full&sslrootcert={}",
        servers().pki.ca.display()
    )
}

/// A url to `server` as postgres, with `params`.
fn url(server: &PgServer, db: &str, params: &str) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/{db}?{params}",
        server.port()
    )
}

/// pgbridge relaying (no rules) to the primary at `primary_url`, with `extra` config sections.
fn relay(primary_url: &str, extra: &str) -> Bridge {
    let (port, admin) = (free_port().unwrap(), free_port().unwrap());
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         [primary]\nurl = \"{primary_url}\"\n{extra}"
    );
    Bridge::start_with_config(port, admin, &config)
}

/// The error of a connection through `bridge` that must fail: (SQLSTATE, message).
async fn refused(bridge: &Bridge, user: &str, db: &str) -> (String, String) {
    let conn = bridge.conn_str(user, "", db);
    let e = match tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
        Ok(_) => panic!("{conn} was accepted"),
        Err(e) => e,
    };
    let db_error = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server's error: {e}"));
    (
        db_error.code().code().to_string(),
        db_error.message().to_string(),
    )
}

/// Whether the session of `client` reaches its server over TLS.
async fn on_tls(client: &tokio_postgres::Client) -> bool {
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

/// A fresh database on both servers of the pair.
fn fresh_pair_db(hint: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let db = format!("tls{n}_{hint}");
    for server in [&servers().primary, &servers().secondary] {
        psql_local(server, "postgres", &format!("CREATE DATABASE {db}"));
    }
    db
}

/// Waits until the primary runs `query` for a session of database `db`.
fn wait_running(db: &str, query: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND state = 'active' \
         AND query = '{query}'"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while psql_local(&servers().primary, "postgres", &sql).trim() != "1" {
        assert!(Instant::now() < deadline, "{query} never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// Multi-threaded: the sleeping query's task runs while this one waits for it, blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_relays_mirrors_serves_reads_and_cancels() {
    let s = servers();
    let db = fresh_pair_db("full");
    let params = verify_full();
    let (p, sec) = (s.primary.port(), s.secondary.port());
    let (bridge, db) = mirrored_with_params(p, sec, &db, DXY_RULE, "", &params);
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    assert!(
        on_tls(&client).await,
        "the session reaches the primary in clear"
    );

    // Reads and writes of a table that is not migrated.
    client
        .batch_execute("CREATE TABLE notes (n int); INSERT INTO notes VALUES (1), (2)")
        .await
        .unwrap();
    let sum: i64 = client
        .query_one("SELECT sum(n) FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 3);

    // A write of the migrated table reaches the secondary, over TLS too.
    client
        .batch_execute(&format!(
            "{INSERT} ('DXY', '2026-01-05 10:00+00', 100, 101, 99, 100.5, 1000)"
        ))
        .await
        .unwrap();
    wait_applied(&bridge);
    let on_primary = psql_local(
        &s.primary,
        &db,
        "SELECT symbol, close::float8 FROM derived_data_bars",
    );
    assert_eq!(on_primary.trim(), "DXY|100.5");
    let mirrored = psql_local(
        &s.secondary,
        &db,
        "SELECT symbol, timeframe, close_px::float8 FROM data_bars",
    );
    assert_eq!(mirrored.trim(), "DXY.IDX|1m|100.5");

    // A read the secondary serves.
    set_reads(&bridge, "secondary");
    let before = metric(&bridge, SERVED, "result=\"served\"");
    let row = client
        .query_one(
            "SELECT close::float8 FROM derived_data_bars WHERE symbol = 'DXY'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, f64>(0), 100.5);
    assert_eq!(metric(&bridge, SERVED, "result=\"served\"") - before, 1.0);

    // A cancel request reaches the primary.
    let token = client.cancel_token();
    let sleeping = tokio::spawn(async move { client.query("SELECT pg_sleep(60)", &[]).await });
    wait_running(&db, "SELECT pg_sleep(60)");
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeping.await.unwrap().unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014", "query_canceled: {err}");
}

#[tokio::test]
async fn require_encrypts_without_a_root_certificate() {
    let s = servers();
    let bridge = relay(&url(&s.primary, "postgres", "sslmode=require"), "");
    let client = connect(&bridge.conn_str("postgres", "", "postgres")).await;
    assert!(on_tls(&client).await);
    // The secondary's url is checked at startup with the rules.
    let db = fresh_pair_db("require");
    let (p, sec) = (s.primary.port(), s.secondary.port());
    let (bridge, db) = mirrored_with_params(p, sec, &db, DXY_RULE, "", "sslmode=require");
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    client
        .batch_execute(&format!(
            "{INSERT} ('DXY', '2026-01-05 10:00+00', 100, 101, 99, 100.5, 1000)"
        ))
        .await
        .unwrap();
    wait_applied(&bridge);
    let mirrored = psql_local(&s.secondary, &db, "SELECT count(*) FROM data_bars");
    assert_eq!(mirrored.trim(), "1");
}

#[tokio::test]
async fn disable_gets_the_servers_pg_hba_refusal() {
    let s = servers();
    let bridge = relay(&url(&s.primary, "postgres", "sslmode=disable"), "");
    let (code, message) = refused(&bridge, "postgres", "postgres").await;
    assert_eq!(code, "28000", "{message}");
    assert!(
        message.contains("no pg_hba.conf entry") && message.contains("no encryption"),
        "{message}"
    );

    // With rules, `serve` checks them against the databases first, and says why it cannot.
    let (_, _, config) = dxy_config(
        &url(&s.primary, "postgres", "sslmode=disable"),
        &url(&s.secondary, "postgres", "sslmode=disable"),
        DXY_RULE,
        "",
    );
    let (code, out) = serve_until_exit(&config);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("cannot reach the primary database") && out.contains("no pg_hba.conf entry"),
        "{out}"
    );
}

#[tokio::test]
async fn a_wrong_ca_is_refused_clearly_and_pgbridge_keeps_running() {
    let s = servers();
    let other = format!(
        "sslmode=verify-full&sslrootcert={}",
        s.pki.other_ca.display()
    );
    let mut bridge = relay(&url(&s.primary, "postgres", &other), "");
    for _ in 0..2 {
        let (code, message) = refused(&bridge, "postgres", "postgres").await;
        assert_eq!(code, "08006", "{message}");
        assert!(
            message.contains("the server certificate is not trusted")
                && message.contains("other-ca.pem"),
            "{message}"
        );
    }
    assert_eq!(bridge.wait_exit(Duration::ZERO), None, "pgbridge exited");
    assert_eq!(bridge.admin_get("/api/status").0, 200);

    let (_, _, config) = dxy_config(
        &url(&s.primary, "postgres", &other),
        &url(&s.secondary, "postgres", &other),
        DXY_RULE,
        "",
    );
    let (code, out) = serve_until_exit(&config);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("cannot reach the primary database")
            && out.contains("the server certificate is not trusted"),
        "{out}"
    );
}

#[tokio::test]
async fn a_certificate_for_another_host_is_refused() {
    let s = servers();
    let bridge = relay(&url(&s.misnamed, "postgres", &verify_full()), "");
    let (code, message) = refused(&bridge, "u_scram", "postgres").await;
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("not valid for host 127.0.0.1 (it is for db.example)"),
        "{message}"
    );
}

#[tokio::test]
async fn a_client_certificate_authenticates_the_sessions() {
    let s = servers();
    let (cert, key) = s.pki.client("u_cert");
    let with_cert = format!(
        "{}&sslcert={}&sslkey={}",
        verify_full(),
        cert.display(),
        key.display()
    );
    let bridge = relay(&url(&s.primary, "postgres", &with_cert), "");
    let client = connect(&bridge.conn_str("u_cert", "", "postgres")).await;
    let row = client
        .query_one(
            "SELECT current_user::text, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "u_cert");
    assert_eq!(row.get::<_, String>(1), "/CN=u_cert");

    let bridge = relay(&url(&s.primary, "postgres", &verify_full()), "");
    let (code, message) = refused(&bridge, "u_cert", "postgres").await;
    assert_eq!(code, "28000", "{message}");
    assert!(
        message.contains("requires a valid client certificate"),
        "{message}"
    );
}

#[tokio::test]
async fn scram_passes_through_without_channel_binding() {
    let s = servers();
    let tls = TlsFiles::new();
    let verify_ca = format!("sslmode=verify-ca&sslrootcert={}", s.pki.ca.display());
    let bridge = relay(&url(&s.misnamed, "postgres", &verify_ca), &tls.config);
    let conn = |client_tls: &str, binding: &str, password: &str| {
        format!(
            "host=127.0.0.1 port={} dbname=postgres user=u_scram password={password} \
             sslmode={client_tls} channel_binding={binding} connect_timeout=20",
            bridge.port
        )
    };
    let who = "SELECT current_user";
    // No TLS to pgbridge: libpq does not ask for channel binding.
    let (out, code) = psql_conn(&conn("disable", "prefer", "pw-scram"), who);
    assert_eq!((out.trim(), code), ("u_scram", 0));
    // TLS to pgbridge, channel binding off.
    let (out, code) = psql_conn(&conn("require", "disable", "pw-scram"), who);
    assert_eq!((out.trim(), code), ("u_scram", 0));
    // TLS to pgbridge, channel binding preferred: libpq then says it supports channel binding
    // but was not offered it, which the primary, itself on TLS, must refuse as a downgrade (and
    // the flag is under the client's proof: pgbridge cannot change it). pgbridge refuses first,
    // saying what to do.
    let (out, code) = psql_conn(&conn("require", "prefer", "pw-scram"), who);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("SCRAM channel binding negotiation error")
            && out.contains("connect with channel_binding=disable"),
        "{out}"
    );
    // Required: pgbridge offers no SCRAM-SHA-256-PLUS, and libpq says so.
    let (out, code) = psql_conn(&conn("require", "require", "pw-scram"), who);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("channel binding is required, but server did not offer"),
        "{out}"
    );
    // A wrong password is the primary's refusal.
    let (out, code) = psql_conn(&conn("require", "disable", "wrong"), who);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("password authentication failed"), "{out}");
}

#[tokio::test]
async fn a_primary_on_a_unix_socket_is_plain_for_pgbridges_own_connections_too() {
    // libpq ignores sslmode over a Unix-domain socket; so do the rules check, the resolver and
    // the relay, while the secondary is reached over verified TLS.
    let s = servers();
    let db = fresh_pair_db("socket");
    psql_local(&s.primary, &db, PRIMARY_DDL);
    psql_local(&s.primary, &db, "TRUNCATE derived_data_bars");
    psql_local(&s.secondary, &db, SECONDARY_DDL);
    let primary = format!(
        "host={} port={} user=postgres dbname={db} sslmode=require",
        s.primary.dir().display(),
        s.primary.port()
    );
    let secondary = url(&s.secondary, &db, &verify_full());
    let (port, admin, config) = dxy_config(&primary, &secondary, DXY_RULE, "");
    let bridge = Bridge::start_with_config(port, admin, &config);
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    assert!(!on_tls(&client).await);
    client
        .batch_execute(&format!(
            "{INSERT} ('DXY', '2026-01-05 10:00+00', 100, 101, 99, 100.5, 1000)"
        ))
        .await
        .unwrap();
    wait_applied(&bridge);
    let mirrored = psql_local(&s.secondary, &db, "SELECT count(*) FROM data_bars");
    assert_eq!(mirrored.trim(), "1");
}
