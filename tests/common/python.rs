//! Real Python clients for the tests: psycopg 3 and asyncpg from PyPI, in a virtualenv the
//! harness makes once (under cargo's test scratch directory, shared by every test binary) and
//! reuses. Without python3 or without PyPI the tests fail, saying what is missing; they never
//! skip.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The packages, pinned so that a run today and a run next year test the same clients.
const PACKAGES: [&str; 2] = ["psycopg[binary]==3.2.13", "asyncpg==0.30.0"];

/// The virtualenv's python, made on first use.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let dir = std::env::var_os("PGBRIDGE_TEST_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("pgbridge-venv"));
        let python = dir.join("bin/python");
        let _lock = lock(&dir.with_extension("lock"));
        if !ready(&python) {
            make(&dir);
        }
        python
    })
}

/// Runs `script` with the virtualenv's python; `args` become `sys.argv[1:]`.
pub fn run(script: &str, args: &[&str]) -> Output {
    Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("the test virtualenv's python runs")
}

/// Runs `script` and returns its stdout; panics with its stderr when it fails.
pub fn run_ok(script: &str, args: &[&str]) -> String {
    let out = run(script, args);
    assert!(
        out.status.success(),
        "the python client failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ready(python: &Path) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", "import psycopg, asyncpg"])
            .output()
            .is_ok_and(|o| o.status.success())
}

fn make(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let venv = Command::new("python3")
        .args(["-m", "venv"])
        .arg(dir)
        .output()
        .expect("python3 is installed (Debian: apt-get install python3 python3-venv)");
    assert!(
        venv.status.success(),
        "python3 -m venv failed (Debian: apt-get install python3-venv): {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let pip = Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PACKAGES)
        .output()
        .expect("the virtualenv has pip");
    assert!(
        pip.status.success(),
        "installing {PACKAGES:?} from PyPI failed (the tests need them; is PyPI reachable?): {}",
        String::from_utf8_lossy(&pip.stderr)
    );
}

/// An exclusive lock across test processes, held while the virtualenv is checked or made.
fn lock(path: &Path) -> File {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let file = File::create(path).expect("the venv lock file can be created");
    // SAFETY: flock on a file descriptor we own; it is released when the file is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "cannot lock {}", path.display());
    file
}
