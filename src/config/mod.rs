//! The typed configuration of `pgbridge serve` (CONTRACT.md, "Config file").
//!
//! Every value is validated while it is deserialized, so a bad value is reported by the TOML
//! deserializer with its span: the error names the file, the line and column, and the key
//! (`pgbridge.toml:3:10: listen: invalid socket address syntax`). Relative paths in the file are
//! resolved against the directory that holds the file, so a config means the same thing whatever
//! the current directory of the process is.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::primary::ServerAddr;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where applications connect.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The admin HTTP API and `/metrics`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// A directory of `*.toml` rule files, or one file.
    #[serde(default = "default_rules")]
    pub rules: PathBuf,
    /// The legacy database: client sessions are relayed here.
    pub primary: PrimaryConfig,
    /// The new database. Optional while nothing is migrated yet.
    #[serde(default)]
    pub secondary: Option<SecondaryConfig>,
    #[serde(default)]
    pub mirror: MirrorConfig,
    #[serde(default)]
    pub divergence: DivergenceConfig,
    /// When set, clients may connect with `sslmode=require`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub shadow: ShadowConfig,
    #[serde(default)]
    pub reads: ReadsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Threads that run sessions; defaults to the number of cores.
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// Whether the file named `rules` itself (else the default `rules` may be absent: no rules).
    #[serde(skip)]
    pub rules_given: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimaryConfig {
    /// Host and port are where sessions are relayed; the credentials are pgbridge's own.
    pub url: PgUrl,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondaryConfig {
    pub url: PgUrl,
    /// Unmigrated tables present and identical on the secondary; `["*"]` for all of them.
    #[serde(default)]
    pub shared_tables: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MirrorMode {
    /// The client's COMMIT returns once the change is in the journal.
    #[default]
    Async,
    /// The client's COMMIT returns once the secondary applied the change.
    Sync,
}

/// What a journal above `max_journal_bytes` (or on a full disk) does to writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Writers of migrated tables wait (their COMMIT is held) until the applier frees space.
    #[default]
    Backpressure,
    /// Writers of migrated tables get an error (their transaction is rolled back).
    Refuse,
}

/// What the applier does after parking a transaction the secondary refused for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Stop applying (the mirror lags, visibly) and retry the parked transaction every few
    /// seconds, so fixing the target resumes the mirror in order.
    #[default]
    Halt,
    /// Go on with the next transactions; the parked one is kept for an operator to replay.
    Skip,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The durable queue of committed writes not yet applied to the secondary.
    #[serde(default = "default_journal_dir")]
    pub journal_dir: PathBuf,
    #[serde(default)]
    pub mode: MirrorMode,
    /// Above this many bytes of journal on disk the journal is "full": an alarm in status and
    /// metrics, and `on_full` applies. Default 8 GiB.
    #[serde(default = "default_max_journal_bytes")]
    pub max_journal_bytes: u64,
    /// Size at which a journal segment file is closed and a new one started; applied segments
    /// are removed whole. Default 64 MiB.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// `backpressure` (default) or `refuse`: see [`OnFull`]. Never a silent drop.
    #[serde(default)]
    pub on_full: OnFull,
    /// `halt` (default) or `skip`: see [`OnError`].
    #[serde(default)]
    pub on_error: OnError,
    /// In sync mode, how long a COMMIT waits for the secondary before it is released anyway
    /// (and a divergence recorded). Default 5 s.
    #[serde(default = "default_sync_timeout", deserialize_with = "de_seconds")]
    pub sync_timeout_secs: Duration,
    /// An intent without an outcome for this long is resolved by asking the primary
    /// (`pg_xact_status`). Default 10 s.
    #[serde(default = "default_resolve_after", deserialize_with = "de_seconds")]
    pub resolve_after_secs: Duration,
    /// An in-doubt intent without a primary transaction id cannot be resolved: apply it when
    /// true, park it (with an `in_doubt` divergence) when false (default).
    #[serde(default)]
    pub assume_committed_without_xid: bool,
    /// How long the applier lets committed transactions gather before it applies a batch that
    /// is not full: one secondary transaction for many costs the secondary (and pgbridge) far
    /// less than one each, for this much more lag. Default 5 ms in async mode, 0 in sync mode
    /// (a sync COMMIT waits for the apply).
    #[serde(default)]
    pub apply_linger_ms: Option<u64>,
}

impl MirrorConfig {
    /// [`MirrorConfig::apply_linger_ms`], with its default for the mode.
    pub fn apply_linger(&self) -> Duration {
        let ms = self.apply_linger_ms.unwrap_or(match self.mode {
            MirrorMode::Async => 5,
            MirrorMode::Sync => 0,
        });
        Duration::from_millis(ms)
    }
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            journal_dir: default_journal_dir(),
            mode: MirrorMode::Async,
            max_journal_bytes: default_max_journal_bytes(),
            segment_bytes: default_segment_bytes(),
            on_full: OnFull::default(),
            on_error: OnError::default(),
            sync_timeout_secs: default_sync_timeout(),
            resolve_after_secs: default_resolve_after(),
            assume_committed_without_xid: false,
            apply_linger_ms: None,
        }
    }
}

fn default_max_journal_bytes() -> u64 {
    8 << 30
}
fn default_segment_bytes() -> u64 {
    64 << 20
}
fn default_sync_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_resolve_after() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DivergenceConfig {
    #[serde(default = "default_divergence_log")]
    pub log: PathBuf,
    #[serde(default = "default_true")]
    pub redact: bool,
}

impl Default for DivergenceConfig {
    fn default() -> Self {
        DivergenceConfig {
            log: default_divergence_log(),
            redact: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Required on mutating admin calls, and whenever `admin_listen` is not a loopback address.
    #[serde(default)]
    pub token: Option<String>,
    /// Every change of a table's read source, one JSON object per line.
    #[serde(default = "default_audit_log")]
    pub audit_log: PathBuf,
    /// The safety gate refuses a switch of reads to `secondary` while the mirror's oldest
    /// unapplied transaction is older than this many seconds. Default 5.
    #[serde(default = "default_gate_lag_seconds")]
    pub gate_max_lag_seconds: f64,
    /// ... or while more transactions than this wait in the journal. Default 1000.
    #[serde(default = "default_gate_lag_transactions")]
    pub gate_max_lag_transactions: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token: None,
            audit_log: default_audit_log(),
            gate_max_lag_seconds: default_gate_lag_seconds(),
            gate_max_lag_transactions: default_gate_lag_transactions(),
        }
    }
}

fn default_audit_log() -> PathBuf {
    PathBuf::from("pgbridge-audit.jsonl")
}
fn default_gate_lag_seconds() -> f64 {
    5.0
}
fn default_gate_lag_transactions() -> u64 {
    1000
}

/// Shadow reads: the secondary's answer to a read compared with the primary's. Optional work:
/// sampled, bounded, with a timeout, never delaying the client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// The share of shadow-flagged reads compared, 0.0 to 1.0. Default 1.0.
    #[serde(default = "default_sample", deserialize_with = "de_share")]
    pub sample: f64,
    /// Shadow reads running on the secondary at once (its connections). Default 4.
    #[serde(default = "default_shadow_concurrency")]
    pub max_concurrency: usize,
    /// Shadow reads waiting for a connection; beyond that they are dropped (and counted).
    /// Default 64.
    #[serde(default = "default_shadow_queue")]
    pub queue: usize,
    /// How long one shadow read may take on the secondary. Default 2000.
    #[serde(default = "default_shadow_timeout")]
    pub timeout_ms: u64,
    /// Floats are equal when they differ by at most this much ... Default 1e-9.
    #[serde(default = "default_float_tolerance")]
    pub float_tolerance_abs: f64,
    /// ... or by at most this share of the larger. Default 1e-9.
    #[serde(default = "default_float_tolerance")]
    pub float_tolerance_rel: f64,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            sample: default_sample(),
            max_concurrency: default_shadow_concurrency(),
            queue: default_shadow_queue(),
            timeout_ms: default_shadow_timeout(),
            float_tolerance_abs: default_float_tolerance(),
            float_tolerance_rel: default_float_tolerance(),
        }
    }
}

/// `[reads]`: reads served by the secondary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadsConfig {
    /// A read the secondary has not answered within this is served by the primary. Default 30000.
    #[serde(default = "default_secondary_timeout")]
    pub secondary_timeout_ms: u64,
    /// After the secondary failed a session, its reads stay on the primary this long. Default 1000.
    #[serde(default = "default_retry_after")]
    pub retry_after_ms: u64,
    /// How long a read after the session's own mirrored commit waits for the applier to apply
    /// it before it is served by the primary instead. Default 500.
    #[serde(default = "default_read_your_writes")]
    pub read_your_writes_ms: u64,
}

impl Default for ReadsConfig {
    fn default() -> Self {
        ReadsConfig {
            secondary_timeout_ms: default_secondary_timeout(),
            retry_after_ms: default_retry_after(),
            read_your_writes_ms: default_read_your_writes(),
        }
    }
}

fn default_secondary_timeout() -> u64 {
    30_000
}
fn default_retry_after() -> u64 {
    1000
}
fn default_read_your_writes() -> u64 {
    500
}

fn default_sample() -> f64 {
    1.0
}
fn default_shadow_concurrency() -> usize {
    4
}
fn default_shadow_queue() -> usize {
    64
}
fn default_shadow_timeout() -> u64 {
    2000
}
fn default_float_tolerance() -> f64 {
    1e-9
}

fn de_share<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(serde::de::Error::custom(
            "expected a share between 0.0 and 1.0",
        ));
    }
    Ok(v)
}

/// Protection of the proxy itself. Not in the first CONTRACT.md example; every key has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Client sessions served at once; one more is refused with SQLSTATE 53300.
    #[serde(default = "default_max_connections")]
    pub max_client_connections: usize,
    /// The largest message a client may send, in bytes (PostgreSQL's own limit is 1 GiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u32,
    /// How long connecting to the primary may take.
    #[serde(default = "default_connect_timeout", deserialize_with = "de_seconds")]
    pub connect_timeout_secs: Duration,
    /// On SIGTERM, how long busy sessions may go on before they are closed.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "de_seconds")]
    pub shutdown_timeout_secs: Duration,
    /// How long a client may take to finish its startup (TLS, startup packet).
    #[serde(default = "default_startup_timeout", deserialize_with = "de_seconds")]
    pub startup_timeout_secs: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_client_connections: default_max_connections(),
            max_message_bytes: default_max_message_bytes(),
            connect_timeout_secs: default_connect_timeout(),
            shutdown_timeout_secs: default_shutdown_timeout(),
            startup_timeout_secs: default_startup_timeout(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6432))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9187))
}
fn default_rules() -> PathBuf {
    PathBuf::from("rules")
}
fn default_journal_dir() -> PathBuf {
    PathBuf::from("pgbridge-journal")
}
fn default_divergence_log() -> PathBuf {
    PathBuf::from("divergences.jsonl")
}
fn default_true() -> bool {
    true
}
fn default_max_connections() -> usize {
    1000
}
fn default_max_message_bytes() -> u32 {
    (1 << 30) - 1
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_startup_timeout() -> Duration {
    Duration::from_secs(60)
}

fn de_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    if !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(serde::de::Error::custom(
            "expected a number of seconds between 0 and one year",
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A PostgreSQL connection string (URL or `key=value` form), validated as it is read.
#[derive(Clone)]
pub struct PgUrl {
    raw: String,
    config: tokio_postgres::Config,
    addr: ServerAddr,
}

impl PgUrl {
    /// The connection settings, for pgbridge's own connections.
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Where client sessions are relayed to.
    pub fn server_addr(&self) -> &ServerAddr {
        &self.addr
    }

    /// The database named by the url, if any.
    pub fn dbname(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// The url with any password masked, for logs and status.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.raw) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("****"));
                }
                u.to_string()
            }
            _ => self.addr.to_string(),
        }
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for PgUrl {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let config = tokio_postgres::Config::from_str(raw)
            .map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
        if config.get_hosts().len() > 1 {
            return Err("give exactly one host".into());
        }
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let addr = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => ServerAddr::Tcp {
                host: host.clone(),
                port,
            },
            Some(tokio_postgres::config::Host::Unix(dir)) => {
                ServerAddr::Unix(dir.join(format!(".s.PGSQL.{port}")))
            }
            None => ServerAddr::Tcp {
                host: "localhost".to_string(),
                port,
            },
        };
        Ok(PgUrl {
            raw: raw.to_string(),
            config,
            addr,
        })
    }
}

impl<'de> Deserialize<'de> for PgUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// A configuration that could not be loaded. Its Display is `FILE:LINE:COL: key: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
}

impl Config {
    /// Reads, validates and resolves the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses config text; `path` only names the file in errors. Paths stay as written.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, col) = line_col(text, span.map(|s| s.start).unwrap_or(0));
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                col,
                message,
            }
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| invalid(e.span(), e.message().trim().to_string()))?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim().to_string();
            if key.is_empty() || key == "." {
                invalid(inner.span(), message)
            } else {
                invalid(inner.span(), format!("{key}: {message}"))
            }
        })?;
        config.rules_given = find_key(text, "rules").is_some();
        config.validate().map_err(|(key, message)| {
            let span = find_key(text, key);
            invalid(span, format!("{key}: {message}"))
        })?;
        Ok(config)
    }

    /// Checks between keys that no single value's type can express.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.admin.token.is_none() && !self.admin_listen.ip().is_loopback() {
            return Err((
                "admin_listen",
                "[admin] token is required when admin_listen is not a loopback address".into(),
            ));
        }
        if self.limits.max_client_connections == 0 {
            return Err(("max_client_connections", "must be at least 1".to_string()));
        }
        if self.limits.max_message_bytes < 1024 {
            return Err(("max_message_bytes", "must be at least 1024".to_string()));
        }
        if self.reads.secondary_timeout_ms == 0 {
            return Err(("secondary_timeout_ms", "must be at least 1".to_string()));
        }
        if self.mirror.apply_linger_ms.is_some_and(|ms| ms > 1000) {
            return Err((
                "apply_linger_ms",
                "must be at most 1000 (it adds to the mirror's lag)".to_string(),
            ));
        }
        if self.shadow.max_concurrency == 0 {
            return Err(("max_concurrency", "must be at least 1".to_string()));
        }
        let tolerances = [
            ("float_tolerance_abs", self.shadow.float_tolerance_abs),
            ("float_tolerance_rel", self.shadow.float_tolerance_rel),
            ("gate_max_lag_seconds", self.admin.gate_max_lag_seconds),
        ];
        for (key, v) in tolerances {
            if !(v >= 0.0 && v.is_finite()) {
                return Err((key, "must be a number of at least 0".to_string()));
            }
        }
        Ok(())
    }

    /// The number of runtime worker threads to start.
    pub fn worker_threads(&self) -> usize {
        self.worker_threads
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.rules);
        resolve(&mut self.mirror.journal_dir);
        resolve(&mut self.divergence.log);
        resolve(&mut self.admin.audit_log);
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// The span of the first line that assigns `key`, for errors found after deserializing.
fn find_key(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                let start = offset + (line.len() - trimmed.len());
                return Some(start..start + key.len());
            }
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("pgbridge.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_contract_example_parses() {
        let c = parse(
            r#"
listen = "127.0.0.1:6432"
admin_listen = "127.0.0.1:9187"
rules = "rules"
[primary]
url = "postgres://pgbridge@127.0.0.1:5432/trading"
[secondary]
url = "postgres://pgbridge:secret@127.0.0.1:5433/trading"
shared_tables = ["instruments"]
[mirror]
journal_dir = "pgbridge-journal"
mode = "async"
[divergence]
log = "divergences.jsonl"
redact = true
[tls]
cert = "server.crt"
key = "server.key"
[admin]
token = "abc"
"#,
        )
        .unwrap();
        assert_eq!(
            c.primary.url.server_addr(),
            &ServerAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 5432
            }
        );
        assert_eq!(c.secondary.unwrap().shared_tables, vec!["instruments"]);
        assert_eq!(c.mirror.mode, MirrorMode::Async);
        assert!(format!("{:?}", c.primary.url).contains("127.0.0.1"));
    }

    #[test]
    fn a_socket_directory_host_is_a_unix_socket() {
        let c = parse("[primary]\nurl = \"host=/run/postgresql port=5433 dbname=x\"\n").unwrap();
        assert_eq!(
            c.primary.url.server_addr(),
            &ServerAddr::Unix("/run/postgresql/.s.PGSQL.5433".into())
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = parse("lisen = \"x\"\n[primary]\nurl = \"postgres://a@h/db\"\n").unwrap_err();
        assert!(err.starts_with("pgbridge.toml:1:1: "), "{err}");
        assert!(err.contains("unknown field `lisen`"), "{err}");
    }

    #[test]
    fn a_bad_value_is_named_with_its_key_and_line() {
        let err =
            parse("listen = \"nowhere\"\n[primary]\nurl = \"postgres://a@h/db\"\n").unwrap_err();
        assert!(err.starts_with("pgbridge.toml:1:10: listen: "), "{err}");
        let err = parse("[primary]\nurl = \"postgres://a@h:notaport/db\"\n").unwrap_err();
        assert!(err.starts_with("pgbridge.toml:2:7: primary.url: "), "{err}");
        let err =
            parse("[primary]\nurl = \"postgres://h/db\"\n[limits]\nmax_client_connections = -1\n")
                .unwrap_err();
        assert!(
            err.starts_with("pgbridge.toml:4:26: limits.max_client_connections"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_section_is_reported() {
        let err = parse("listen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.contains("missing field `primary`"), "{err}");
    }

    #[test]
    fn a_public_admin_listener_needs_a_token() {
        let err = parse("admin_listen = \"0.0.0.0:9187\"\n[primary]\nurl = \"postgres://h/db\"\n")
            .unwrap_err();
        assert!(
            err.starts_with("pgbridge.toml:1:1: admin_listen: "),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgbridge.toml");
        std::fs::write(&path, "[primary]\nurl = \"postgres://h/db\"\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.rules, dir.path().join("rules"));
        assert_eq!(c.limits.max_client_connections, 1000);
    }

    #[test]
    fn the_apply_linger_defaults_by_mode_and_is_bounded() {
        let primary = "[primary]\nurl = \"postgres://a@h/db\"\n";
        let c = parse(primary).unwrap();
        assert_eq!(c.mirror.apply_linger(), Duration::from_millis(5));
        let c = parse(&format!("{primary}[mirror]\nmode = \"sync\"\n")).unwrap();
        assert_eq!(c.mirror.apply_linger(), Duration::ZERO);
        let c = parse(&format!("{primary}[mirror]\napply_linger_ms = 20\n")).unwrap();
        assert_eq!(c.mirror.apply_linger(), Duration::from_millis(20));
        let err = parse(&format!("{primary}[mirror]\napply_linger_ms = 5000\n")).unwrap_err();
        assert!(
            err.starts_with("pgbridge.toml:4:1: apply_linger_ms: must be at most 1000"),
            "{err}"
        );
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
