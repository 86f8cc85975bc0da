//! `[primary]` and `[secondary]`: where the two databases are. A [`PgUrl`] is a PostgreSQL
//! connection string (URL or `key=value` form) validated as it is read; it knows where client
//! sessions are relayed to and masks its password whenever it is shown.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::net::addr::ServerAddr;

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
        let addr = server_addr(&config);
        Ok(PgUrl {
            raw: raw.to_string(),
            config,
            addr,
        })
    }
}

/// Where a one-host connection string points: a TCP host, or the socket file in a directory.
fn server_addr(config: &tokio_postgres::Config) -> ServerAddr {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
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
    }
}

impl<'de> Deserialize<'de> for PgUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
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
    fn a_socket_directory_host_is_a_unix_socket() {
        let c = parse("[primary]\nurl = \"host=/run/postgresql port=5433 dbname=x\"\n").unwrap();
        assert_eq!(
            c.primary.url.server_addr(),
            &ServerAddr::Unix("/run/postgresql/.s.PGSQL.5433".into())
        );
    }

    #[test]
    fn a_password_is_masked_when_shown() {
        let u: PgUrl = "postgres://pgbridge:secret@127.0.0.1:5433/trading"
            .parse()
            .unwrap();
        assert_eq!(
            u.redacted(),
            "postgres://pgbridge:****@127.0.0.1:5433/trading"
        );
        assert!(!format!("{u:?}").contains("secret"));
        assert_eq!(u.dbname(), Some("trading"));
        let two = "host=a,b dbname=x".parse::<PgUrl>().unwrap_err();
        assert_eq!(two, "give exactly one host");
    }
}
