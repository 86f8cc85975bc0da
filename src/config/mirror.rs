//! `[mirror]`: the journal of committed writes and the applier that carries them to the
//! secondary. What a full journal or a refused transaction does is the operator's choice
//! ([`OnFull`], [`OnError`]); neither is ever a silent drop.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de::de_seconds;

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
    /// Apply each row's images in the primary's order across instances (src/mirror/apply/
    /// order.rs): needed when several instances write the same rows; it costs the applier one
    /// statement per batch and a row per key in `pgbridge.row_versions`. Off by default.
    #[serde(default)]
    pub order_rows: bool,
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
            order_rows: false,
        }
    }
}

fn default_journal_dir() -> PathBuf {
    PathBuf::from("pgbridge-journal")
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("pgbridge.toml")).map_err(|e| e.to_string())
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
    fn durations_are_seconds_within_a_year() {
        let primary = "[primary]\nurl = \"postgres://a@h/db\"\n";
        let c = parse(&format!("{primary}[mirror]\nsync_timeout_secs = 0.25\n")).unwrap();
        assert_eq!(c.mirror.sync_timeout_secs, Duration::from_millis(250));
        assert_eq!(c.mirror.resolve_after_secs, Duration::from_secs(10));
        let err = parse(&format!("{primary}[mirror]\nresolve_after_secs = -1\n")).unwrap_err();
        assert!(
            err.starts_with(
                "pgbridge.toml:4:22: mirror.resolve_after_secs: expected a number of seconds"
            ),
            "{err}"
        );
    }
}
