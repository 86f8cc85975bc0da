//! The integration-test harness: real PostgreSQL servers and the real `pgbridge` binary.
//!
//! One primary and one secondary per test binary, started on first use from the machine's
//! PostgreSQL binaries (the tests fail, saying how to install them, when they are missing); a fresh
//! database per test; pgbridge started as a child process with a generated config, so that tests
//! can signal and kill it as an operator would.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pgbridge::pgcluster::{free_port, PgOptions, PgServer};

/// Users for each authentication method, as `(user, password, pg_hba method)`.
pub const AUTH_USERS: [(&str, &str, &str); 4] = [
    ("u_trust", "", "trust"),
    ("u_password", "pw-clear", "password"),
    ("u_md5", "pw-md5", "md5"),
    ("u_scram", "pw-scram", "scram-sha-256"),
];

pub struct Cluster {
    pub primary: Mutex<PgServer>,
    pub secondary: Mutex<PgServer>,
    pub primary_port: u16,
    pub secondary_port: u16,
}

/// The servers of this test binary.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let primary = start_server();
        let secondary = start_server();
        Cluster {
            primary_port: primary.port(),
            secondary_port: secondary.port(),
            primary: Mutex::new(primary),
            secondary: Mutex::new(secondary),
        }
    })
}

/// A server with the authentication users set up; panics with the install hint when PostgreSQL
/// is missing.
pub fn start_server() -> PgServer {
    let hba = AUTH_USERS
        .iter()
        .map(|(user, _, method)| format!("host all {user} 127.0.0.1/32 {method}"))
        .collect();
    // Room for the tests that open a few hundred sessions through pgbridge at once.
    let server = PgServer::start(&PgOptions {
        hba,
        settings: vec![("max_connections".into(), "300".into())],
        ..PgOptions::default()
    })
    .unwrap_or_else(|e| panic!("cannot start PostgreSQL for the tests: {e}"));
    let mut sql = String::new();
    for (user, password, method) in AUTH_USERS {
        let encryption = if method == "md5" {
            "md5"
        } else {
            "scram-sha-256"
        };
        sql.push_str(&format!(
            "SET password_encryption = '{encryption}';\
             CREATE ROLE {user} LOGIN SUPERUSER PASSWORD {};",
            if password.is_empty() {
                "NULL".to_string()
            } else {
                format!("'{password}'")
            }
        ));
    }
    psql_on(server.port(), "postgres", &sql);
    server
}

/// Runs SQL with psql as the superuser; panics on failure.
pub fn psql_on(port: u16, db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &port.to_string(), "-d", db, "-c", sql])
        .output()
        .expect("psql is installed (apt-get install postgresql-client-15)");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh database with this name prefix on both servers; returns its name.
pub fn fresh_db(hint: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let c = cluster();
    let name = format!("t{}_{}", N.fetch_add(1, Ordering::Relaxed), hint);
    psql_on(
        c.primary_port,
        "postgres",
        &format!("CREATE DATABASE {name}"),
    );
    psql_on(
        c.secondary_port,
        "postgres",
        &format!("CREATE DATABASE {name}"),
    );
    name
}

/// A running pgbridge.
pub struct Bridge {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
}

/// The config of a bridge in front of the shared cluster, before `extra` lines.
pub fn default_config(port: u16, admin_port: u16, primary_port: u16) -> String {
    let c = cluster();
    format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
         [primary]\nurl = \"postgres://postgres@127.0.0.1:{primary_port}/postgres\"\n\
         [secondary]\nurl = \"postgres://postgres@127.0.0.1:{}/postgres\"\n",
        c.secondary_port
    )
}

impl Bridge {
    /// pgbridge in front of the shared primary; `extra` is appended to the config (sections).
    pub fn start(extra: &str) -> Bridge {
        Bridge::start_for(cluster().primary_port, extra)
    }

    /// pgbridge in front of a primary on `primary_port`.
    pub fn start_for(primary_port: u16, extra: &str) -> Bridge {
        let port = free_port().unwrap();
        let admin_port = free_port().unwrap();
        let config = format!("{}{extra}", default_config(port, admin_port, primary_port));
        Bridge::start_with_config(port, admin_port, &config)
    }

    pub fn start_with_config(port: u16, admin_port: u16, config: &str) -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pgbridge.toml"), config).unwrap();
        let child = spawn_bridge(&dir);
        let mut bridge = Bridge {
            child,
            port,
            admin_port,
            dir,
        };
        bridge.wait_listening();
        bridge
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pgbridge exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "pgbridge did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same config again (after a kill), on the same ports.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_bridge(&self.dir);
        self.wait_listening();
    }

    /// A libpq-style connection string through the bridge.
    pub fn conn_str(&self, user: &str, password: &str, db: &str) -> String {
        let mut s = format!("host=127.0.0.1 port={} user={user} dbname={db}", self.port);
        if !password.is_empty() {
            s.push_str(&format!(" password={password}"));
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What pgbridge has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbridge.log")).unwrap_or_default()
    }

    /// GET on the admin API; returns status code and body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http(self.admin_port, "GET", path, None, None)
    }

    /// Peak resident memory of the pgbridge process, in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_bridge(dir: &tempfile::TempDir) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("pgbridge.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["serve", "--config"])
        .arg(dir.path().join("pgbridge.toml"))
        .env("PGBRIDGE_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("the pgbridge binary runs")
}

/// A minimal HTTP/1.1 exchange with the admin API.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Runs a psql script file against a connection string; returns (stdout+stderr, exit code).
pub fn psql_script(conn: &str, script: &str) -> (String, i32) {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("script.sql");
    std::fs::write(&path, script).unwrap();
    let out = Command::new("psql")
        .args(["-X", "-a", "-v", "VERBOSITY=verbose"])
        .arg(conn)
        .arg("-f")
        .arg(&path)
        .env("PGAPPNAME", "pgbridge-test")
        .stderr(Stdio::piped())
        .output()
        .expect("psql is installed");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str("--- stderr ---\n");
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (
        text.replace(&path.display().to_string(), "SCRIPT"),
        out.status.code().unwrap_or(-1),
    )
}

/// tokio-postgres connected through `conn`; the connection task runs in the background.
pub async fn connect(conn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conn}: {e}"));
    tokio::spawn(connection);
    client
}

/// A connection string straight to the shared primary.
pub fn direct(user: &str, password: &str, db: &str) -> String {
    let mut s = format!(
        "host=127.0.0.1 port={} user={user} dbname={db}",
        cluster().primary_port
    );
    if !password.is_empty() {
        s.push_str(&format!(" password={password}"));
    }
    s
}

/// Locks a server of the shared cluster for a test that stops it.
pub fn lock(server: &Mutex<PgServer>) -> MutexGuard<'_, PgServer> {
    server.lock().unwrap_or_else(|e| e.into_inner())
}

pub mod cdp;
pub mod dxy;
pub mod jobs;
pub mod python;
pub mod tls_pg;
pub mod wire;
pub mod writes;

/// tokio-postgres connected through `conn`, with its notices and notifications sent to the
/// returned channel.
pub async fn connect_with_messages(
    conn: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>,
) {
    let (client, mut connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conn}: {e}"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(msg)) = futures_util::StreamExt::next(&mut stream).await {
            let _ = tx.send(msg);
        }
    });
    (client, rx)
}

/// A self-signed certificate for `localhost` in a temporary directory, and the `[tls]` section
/// that points at it.
pub struct TlsFiles {
    pub dir: tempfile::TempDir,
    pub config: String,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
}

impl TlsFiles {
    pub fn new() -> TlsFiles {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        std::fs::write(dir.path().join("server.crt"), cert.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("server.key"),
            cert.signing_key.serialize_pem(),
        )
        .unwrap();
        let config = format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.path().join("server.crt").display(),
            dir.path().join("server.key").display()
        );
        TlsFiles {
            config,
            cert_der: cert.cert.der().clone(),
            dir,
        }
    }
}
