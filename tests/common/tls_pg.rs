//! PostgreSQL servers that accept TLS only, and the certificates they use: a CA made by the test
//! (and another CA that signed nothing), server certificates for chosen names, a client
//! certificate for `cert` authentication; files readable by the `postgres` user, keys mode 0600.
//! Also `pgbridge serve` run to its exit, for the configs it must refuse at startup.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgbridge::pgcluster::{PgOptions, PgServer};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};

/// A CA and the files of what it signed, in a directory the `postgres` user can read.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The CA's certificate: `sslrootcert` for the servers made here.
    pub ca: PathBuf,
    /// Another CA, which signed nothing here.
    pub other_ca: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// The uid and gid of the `postgres` user when running as root (the servers run as it).
fn postgres_owner() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no postgres user to run the servers as");
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Writes a key file readable by its owner only (`postgres` for a server's key).
fn write_key(path: &Path, pem: &str, for_server: bool) {
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let (true, Some((uid, gid))) = (for_server, postgres_owner()) {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (ca_pem, issuer) = ca("pgbridge test CA");
        let (other_pem, _) = ca("another CA");
        let ca = dir.path().join("ca.pem");
        let other_ca = dir.path().join("other-ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        std::fs::write(&other_ca, other_pem).unwrap();
        Pki {
            dir,
            ca,
            other_ca,
            issuer,
        }
    }

    /// A certificate signed by the CA, for subject alternative `names` (IP addresses or DNS
    /// names) and common name `cn`; its files are `<file>.crt` and `<file>.key`.
    fn sign(&self, file: &str, names: &[&str], cn: &str, for_server: bool) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = self.dir.path().join(format!("{file}.crt"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        write_key(&key_path, &key.serialize_pem(), for_server);
        (cert_path, key_path)
    }

    /// A server certificate for `names` and its key (owned by `postgres`).
    pub fn server(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.sign(file, names, names[0], true)
    }

    /// A client certificate for user `user` (its common name) and its key, pgbridge's own.
    pub fn client(&self, user: &str) -> (PathBuf, PathBuf) {
        self.sign(user, &[], user, false)
    }
}

/// A server with `ssl = on`, the certificate `file` of `pki` for `names`, client certificates
/// checked against the CA, and a pg_hba.conf of `hba` (hostssl lines) and `local` trust only.
pub fn tls_server(
    pki: &Pki,
    file: &str,
    names: &[&str],
    hba: &[&str],
    settings: &[(&str, &str)],
) -> PgServer {
    let (cert, key) = pki.server(file, names);
    let quoted = |p: &Path| format!("'{}'", p.display());
    let mut all = vec![
        ("ssl".to_string(), "on".to_string()),
        ("ssl_cert_file".to_string(), quoted(&cert)),
        ("ssl_key_file".to_string(), quoted(&key)),
        ("ssl_ca_file".to_string(), quoted(&pki.ca)),
    ];
    all.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    PgServer::start(&PgOptions {
        hba: hba.iter().map(|l| l.to_string()).collect(),
        settings: all,
        tcp_by_hba_only: true,
    })
    .unwrap_or_else(|e| panic!("cannot start a TLS PostgreSQL for the tests: {e}"))
}

/// Runs SQL with psql as the superuser over the server's Unix-domain socket (pg_hba's `local`
/// line), which needs no TLS; panics on failure.
pub fn psql_local(server: &PgServer, db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-U", "postgres"])
        .arg("-h")
        .arg(server.dir())
        .args(["-p", &server.port().to_string(), "-d", db, "-c", sql])
        .output()
        .expect("psql is installed");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `pgbridge serve` with `config` until it exits (it must, within 60 s); returns its exit
/// code and what it wrote.
pub fn serve_until_exit(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgbridge.toml");
    std::fs::write(&path, config).unwrap();
    let log = dir.path().join("out.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), std::fs::read_to_string(&log).unwrap())
}

/// psql's output and exit code for `conn`, running `sql`.
pub fn psql_conn(conn: &str, sql: &str) -> (String, i32) {
    let out = Command::new("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .arg(conn)
        .args(["-c", sql])
        .output()
        .expect("psql is installed");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (text, out.status.code().unwrap_or(-1))
}
