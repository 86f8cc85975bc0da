//! `[verify]`: the verify schedule and the automatic repair of tables the mirror is known to
//! have missed writes to (src/migrate/auto.rs). Every key has a default, so the section may be
//! left out.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// Verify every verifiable table this often, in seconds; 0 (the default) never.
    #[serde(default)]
    pub every_secs: u64,
    /// When a write pgbridge could not mirror (a MERGE, a write in a CTE or a function)
    /// committed on a migrated table: verify the table and repair what differs, by itself.
    /// Default true.
    #[serde(default = "default_true")]
    pub auto_repair: bool,
    /// The scheduled and automatic verifies' rows per second (0: unlimited). Default 0.
    #[serde(default)]
    pub max_rows_per_sec: i64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            every_secs: 0,
            auto_repair: true,
            max_rows_per_sec: 0,
        }
    }
}

fn default_true() -> bool {
    true
}
