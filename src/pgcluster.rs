//! Throwaway PostgreSQL servers started from the machine's own binaries.
//!
//! `pgbridge demo` and the integration tests both need real servers: `initdb` into a temporary
//! directory, a free loopback port, durability off (`fsync=off`), and the server gone when its
//! owner is dropped, or when the owning process dies however it dies (the server is started with
//! a parent-death signal). As root, PostgreSQL refuses to run, so the files and the processes then
//! belong to the `postgres` user.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Why a server could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PgClusterError {
    #[error(
        "PostgreSQL server binaries not found (looked for initdb and postgres in {looked}). \
         Install them, e.g. `apt-get install postgresql-15`, or point PGBRIDGE_PG_BIN at their directory"
    )]
    BinariesMissing { looked: String },
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn failed(what: impl Into<String>, detail: impl Into<String>) -> PgClusterError {
    PgClusterError::Failed {
        what: what.into(),
        detail: detail.into(),
    }
}

/// How to set up a server.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Lines placed at the top of pg_hba.conf, before the default `trust` lines.
    pub hba: Vec<String>,
    /// Extra `name = value` settings for postgresql.conf.
    pub settings: Vec<(String, String)>,
    /// Leaves out the default `host ... trust` lines, so that TCP connections are accepted only
    /// as `hba` says (e.g. `hostssl` lines for a server that requires TLS); the `local` trust
    /// line stays, for the owner's own psql over the socket.
    pub tcp_by_hba_only: bool,
}

/// A running (or stopped, restartable) throwaway server. Dropping it stops the server and removes
/// its files.
pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    owner: Option<(u32, u32)>,
}

impl PgServer {
    /// initdb, configure and start a server on a free loopback port.
    pub fn start(opts: &PgOptions) -> Result<PgServer, PgClusterError> {
        let bin = find_bin_dir()?;
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgbridge-pg-{}-", std::process::id()))
            .tempdir()?;
        let owner = postgres_owner()?;
        let data = init_data(&bin, dir.path(), owner)?;
        let port = free_port()?;
        configure(&data, dir.path(), port, opts)?;
        let mut server = PgServer {
            bin,
            dir,
            port,
            child: None,
            owner,
        };
        server.start_again()?;
        Ok(server)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `user` and `dbname` (no password).
    pub fn url(&self, user: &str, dbname: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{dbname}", self.port)
    }

    /// The directory of the data and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Stops the server (fast shutdown: sessions are closed) and waits for it to exit.
    pub fn stop(&mut self) -> Result<(), PgClusterError> {
        if let Some(mut child) = self.child.take() {
            // SIGINT is PostgreSQL's fast shutdown.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts a stopped server again, on the same port with the same data.
    pub fn start_again(&mut self) -> Result<(), PgClusterError> {
        if self.is_running() {
            return Ok(());
        }
        let log_path = self.dir.path().join("postgres.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let log_start = log.metadata()?.len();
        if let Some((uid, gid)) = self.owner {
            chown(&log_path, uid, gid)?;
        }
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        run_as(&mut cmd, self.owner);
        unsafe {
            cmd.pre_exec(|| {
                // The server goes when the process that started it goes, even by SIGKILL.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        self.child = Some(spawn_from_long_lived_thread(cmd)?);
        self.wait_ready(&log_path, log_start)
    }

    fn wait_ready(&mut self, log_path: &Path, from: u64) -> Result<(), PgClusterError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut text = String::new();
            let mut f = fs::File::open(log_path)?;
            f.seek(SeekFrom::Start(from))?;
            f.read_to_string(&mut text)?;
            if text.contains("database system is ready to accept connections") {
                return Ok(());
            }
            if !self.is_running() || Instant::now() > deadline {
                let _ = self.stop();
                return Err(failed("starting postgres", text));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the files are removed next anyway.
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }
}

/// A new data directory in `dir` (owned by `owner` when set), made by `initdb`.
fn init_data(bin: &Path, dir: &Path, owner: Option<(u32, u32)>) -> Result<PathBuf, PgClusterError> {
    let data = dir.join("data");
    fs::create_dir(&data)?;
    if let Some((uid, gid)) = owner {
        chown(dir, uid, gid)?;
        chown(&data, uid, gid)?;
    }
    let out = run_as(
        Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync"),
        owner,
    )
    .output()?;
    if !out.status.success() {
        return Err(failed("initdb", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(data)
}

/// The settings of a throwaway server (loopback `port`, its socket in `dir`, durability off)
/// and `opts`' own, and pg_hba.conf with `opts.hba` before the default `trust` lines (the
/// `local` one alone with `opts.tcp_by_hba_only`).
fn configure(data: &Path, dir: &Path, port: u16, opts: &PgOptions) -> Result<(), PgClusterError> {
    let mut conf = format!(
        "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
         fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 300\n\
         max_prepared_transactions = 20\nshared_buffers = 64MB\nlogging_collector = off\n\
         log_min_messages = warning\n",
        dir.display()
    );
    for (k, v) in &opts.settings {
        conf.push_str(&format!("{k} = {v}\n"));
    }
    append(&data.join("postgresql.conf"), &conf)?;
    let mut hba = opts.hba.join("\n");
    hba.push_str("\nlocal all all trust\n");
    if !opts.tcp_by_hba_only {
        hba.push_str("host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n");
    }
    fs::write(data.join("pg_hba.conf"), hba)?;
    Ok(())
}

/// The directory holding `initdb` and `postgres`: PGBRIDGE_PG_BIN, else the newest
/// /usr/lib/postgresql/*/bin, else `pg_config --bindir`.
pub fn find_bin_dir() -> Result<PathBuf, PgClusterError> {
    let mut looked = Vec::new();
    let mut candidates = Vec::new();
    if let Ok(dir) = std::env::var("PGBRIDGE_PG_BIN") {
        candidates.push(PathBuf::from(dir));
    } else {
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|(_, p)| p));
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !dir.is_empty() {
                candidates.push(PathBuf::from(dir));
            }
        }
        if candidates.is_empty() {
            candidates.push(PathBuf::from("/usr/lib/postgresql/15/bin"));
        }
    }
    for dir in candidates {
        if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
            return Ok(dir);
        }
        looked.push(dir.display().to_string());
    }
    Err(PgClusterError::BinariesMissing {
        looked: looked.join(", "),
    })
}

/// A loopback port that was free a moment ago, and that this process was not given before:
/// tests start servers and bridges side by side, and a port handed to one of them but not yet
/// bound must not be handed to another (a bridge listening where another's admin API does).
pub fn free_port() -> std::io::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

/// When running as root, the uid and gid of the `postgres` user, which then owns the servers.
fn postgres_owner() -> Result<Option<(u32, u32)>, PgClusterError> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no NUL in a literal");
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(failed(
            "finding the postgres user",
            "PostgreSQL refuses to run as root and there is no `postgres` user to run it as; \
             install the postgresql package or run as an ordinary user",
        ));
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn run_as(cmd: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Directories of servers whose owning process is gone (killed before it could clean up).
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("pgbridge-pg-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so servers are forked
/// from one thread that lives as long as the process.
fn spawn_from_long_lived_thread(mut cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("pg-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this loop never ends.
            })
            .expect("spawning a thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    let sent = spawner
        .lock()
        .map_err(|_| std::io::Error::other("spawner poisoned"))?
        .send((cmd, reply_tx));
    if let Err(mpsc::SendError((c, _))) = sent {
        cmd = c;
        return cmd.spawn();
    }
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_stops_and_starts_again() {
        let mut server = PgServer::start(&PgOptions::default()).expect("start");
        let port = server.port();
        let ready = |port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        assert!(ready(port));
        server.stop().unwrap();
        assert!(!ready(port));
        server.start_again().unwrap();
        assert!(ready(port));
        let dir = server.dir().to_path_buf();
        drop(server);
        assert!(!dir.exists());
    }
}
