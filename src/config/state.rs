//! `[state]`: where the instances sharing one migration keep what they must agree on (the read
//! flags, the instances' heartbeats; src/state/mod.rs), and this instance's name there.

use serde::Deserialize;

use super::PgUrl;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The database of the shared state (schema `pgbridge`); default: the secondary's url.
    #[serde(default)]
    pub url: Option<PgUrl>,
    /// This instance's name among them; default: the host name and the listen port.
    #[serde(default)]
    pub instance: Option<String>,
}

impl super::Config {
    /// The shared state's database: `[state] url`, else the secondary's; none without either.
    pub fn state_url(&self) -> Option<&PgUrl> {
        self.state
            .url
            .as_ref()
            .or(self.secondary.as_ref().map(|s| &s.url))
    }

    /// This instance's name: `[state] instance`, else `host:port` of the listen address.
    pub fn instance_name(&self) -> String {
        if let Some(name) = self.state.instance.as_ref().filter(|n| !n.is_empty()) {
            return name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "pgbridge".into());
        format!("{host}:{}", self.listen.port())
    }
}
