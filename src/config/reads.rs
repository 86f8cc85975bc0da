//! `[reads]` and `[shadow]`: reads served by the secondary, and reads compared on it. Both are
//! optional work for the secondary, bounded by timeouts so that a slow secondary costs the
//! client nothing (docs/DESIGN.md, principle 8).

use serde::Deserialize;

use super::de::de_share;

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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("pgbridge.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_sample_is_a_share_and_tolerances_are_not_negative() {
        let primary = "[primary]\nurl = \"postgres://a@h/db\"\n";
        let c = parse(&format!("{primary}[shadow]\nsample = 0.5\n")).unwrap();
        assert_eq!(c.shadow.sample, 0.5);
        assert_eq!(c.shadow.float_tolerance_rel, 1e-9);
        assert_eq!(c.reads.secondary_timeout_ms, 30_000);
        let err = parse(&format!("{primary}[shadow]\nsample = 1.5\n")).unwrap_err();
        assert!(
            err.starts_with("pgbridge.toml:4:10: shadow.sample: expected a share"),
            "{err}"
        );
        let err = parse(&format!("{primary}[shadow]\nfloat_tolerance_abs = -1.0\n")).unwrap_err();
        assert!(
            err.starts_with(
                "pgbridge.toml:4:1: float_tolerance_abs: must be a number of at least 0"
            ),
            "{err}"
        );
    }
}
