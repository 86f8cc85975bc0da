//! The sections that run the proxy itself rather than the migration: `[admin]` (the API's token,
//! the audit log, the read switch's safety gate), `[limits]` (protection of the proxy),
//! `[tls]` (TLS termination) and `[divergence]` (the divergence log).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de::de_seconds;

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

fn default_divergence_log() -> PathBuf {
    PathBuf::from("divergences.jsonl")
}
fn default_true() -> bool {
    true
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
    /// Named tokens, `name = "token"`: a change made with one is audited with its name as
    /// `who` (the unnamed `token` records who the client says it is).
    #[serde(default)]
    pub tokens: std::collections::BTreeMap<String, String>,
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
    /// How old the last clean verify of a table may be for status to count it current (a day
    /// by default).
    #[serde(default = "default_gate_verify_age")]
    pub gate_max_verify_age_secs: u64,
    /// The read gate looks at the shadow reads of this many last seconds (15 minutes by
    /// default) ...
    #[serde(default = "default_gate_shadow_window")]
    pub gate_shadow_window_secs: u64,
    /// ... and refuses a switch to `secondary` when more than this share of them differed
    /// (0 by default: any mismatch in the window).
    #[serde(default)]
    pub gate_max_shadow_mismatch_rate: f64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token: None,
            tokens: Default::default(),
            audit_log: default_audit_log(),
            gate_max_lag_seconds: default_gate_lag_seconds(),
            gate_max_lag_transactions: default_gate_lag_transactions(),
            gate_max_verify_age_secs: default_gate_verify_age(),
            gate_shadow_window_secs: default_gate_shadow_window(),
            gate_max_shadow_mismatch_rate: 0.0,
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
fn default_gate_verify_age() -> u64 {
    86_400
}
fn default_gate_shadow_window() -> u64 {
    900
}

/// Protection of the proxy itself. Every key has a default, so the section may be left out.
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("pgbridge.toml")).map_err(|e| e.to_string())
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
    fn every_section_has_its_defaults() {
        let c = parse("[primary]\nurl = \"postgres://h/db\"\n").unwrap();
        assert_eq!(c.limits.max_message_bytes, (1 << 30) - 1);
        assert_eq!(
            c.limits.startup_timeout_secs,
            std::time::Duration::from_secs(60)
        );
        assert_eq!(c.admin.gate_max_lag_transactions, 1000);
        assert!(c.divergence.redact);
        assert!(c.tls.is_none());
    }
}
