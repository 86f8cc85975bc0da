//! `[primary]` and `[secondary]`: where the two databases are. A [`PgUrl`] is a PostgreSQL
//! connection string (URL or `key=value` form) validated as it is read; it knows where client
//! sessions are relayed to, how TLS is used to get there (libpq's `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey`, its files read now), and masks its password whenever it is shown.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::conninfo::split_tls;
use crate::net::addr::ServerAddr;
use crate::net::tls::{self, Attempt, ClientTls, ClientTlsError, MakeRustls, PgConnection};
use crate::net::tls::{SslMode, TlsSettings};

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
    /// Without the TLS keys, which `tls` has.
    config: tokio_postgres::Config,
    addr: ServerAddr,
    tls: ClientTls,
}

/// Why a connection string cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("not a PostgreSQL connection string: {0}")]
    Syntax(String),
    #[error("give exactly one host")]
    Hosts,
    #[error("sslnegotiation: only \"postgres\" (an SSLRequest first) is supported, not {0:?}")]
    Negotiation(String),
    #[error(transparent)]
    Tls(#[from] ClientTlsError),
}

impl PgUrl {
    /// The connection settings, for pgbridge's own connections, without the TLS keys: connect
    /// with [`PgUrl::connect`], which adds them.
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// How connections to this database use TLS.
    pub fn tls(&self) -> &ClientTls {
        &self.tls
    }

    /// One of pgbridge's own connections (spawn the connection half), TLS as the url says.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, PgConnection), tokio_postgres::Error> {
        tls::connect(&self.config, &self.tls).await
    }

    /// The TLS connector for a cancel token of a connection made with [`PgUrl::connect`].
    pub fn make_tls(&self) -> MakeRustls {
        MakeRustls::new(&self.tls)
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
    type Err = UrlError;

    fn from_str(raw: &str) -> Result<Self, UrlError> {
        let (rest, keys) = split_tls(raw).map_err(UrlError::Syntax)?;
        let mut config =
            tokio_postgres::Config::from_str(&rest).map_err(|e| UrlError::Syntax(e.to_string()))?;
        if config.get_hosts().len() > 1 {
            return Err(UrlError::Hosts);
        }
        let addr = server_addr(&config);
        let host = match &addr {
            ServerAddr::Tcp { host, .. } => Some(host.as_str()),
            ServerAddr::Unix(_) => None,
        };
        let tls = ClientTls::new(&tls_settings(keys)?, host)?;
        config.ssl_mode(match tls.attempts()[0] {
            Attempt::Plain => tokio_postgres::config::SslMode::Disable,
            Attempt::TlsIfOffered => tokio_postgres::config::SslMode::Prefer,
            Attempt::TlsRequired => tokio_postgres::config::SslMode::Require,
        });
        Ok(PgUrl {
            raw: raw.to_string(),
            config,
            addr,
            tls,
        })
    }
}

/// The TLS keys as written (the last one of a key counts, as in libpq).
fn tls_settings(keys: Vec<(&'static str, String)>) -> Result<TlsSettings, UrlError> {
    let mut settings = TlsSettings::default();
    for (key, value) in keys {
        match key {
            "sslmode" => settings.mode = Some(value.parse::<SslMode>()?),
            "sslrootcert" => settings.rootcert = Some(value),
            "sslcert" => settings.cert = Some(value.into()),
            "sslkey" => settings.key = Some(value.into()),
            "sslnegotiation" if value != "postgres" => return Err(UrlError::Negotiation(value)),
            // sslnegotiation=postgres, libpq's default.
            _ => {}
        }
    }
    Ok(settings)
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
        assert_eq!(two.to_string(), "give exactly one host");
    }

    #[test]
    fn tls_keys_are_read_in_both_forms_and_kept_from_tokio_postgres() {
        let pki = crate::net::tls::testing::Pki::new();
        let ca = pki.ca.display();
        let u: PgUrl = format!(
            "postgres://pgbridge@db.example:5433/trading?application_name=x&sslmode=verify-full&sslrootcert={ca}"
        )
        .parse()
        .unwrap();
        assert_eq!(u.tls().mode(), SslMode::VerifyFull);
        assert_eq!(u.tls().check(), crate::net::tls::Check::Full);
        assert_eq!(u.pg_config().get_application_name(), Some("x"));
        assert_eq!(
            u.pg_config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let kv: PgUrl = format!(
            "host=db.example dbname=trading sslmode=verify-ca sslrootcert='{ca}' \
             sslcert={} sslkey={}",
            pki.client_cert.display(),
            pki.client_key.display()
        )
        .parse()
        .unwrap();
        assert_eq!(kv.tls().check(), crate::net::tls::Check::Chain);
        assert_eq!(kv.dbname(), Some("trading"));
        let allow: PgUrl = "host=h sslmode=allow".parse().unwrap();
        assert_eq!(
            allow.pg_config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        // libpq ignores sslmode over a Unix-domain socket.
        let unix: PgUrl = "host=/run/postgresql sslmode=verify-full".parse().unwrap();
        assert!(!unix.tls().may_encrypt());
        let direct = "host=h sslnegotiation=direct".parse::<PgUrl>().unwrap_err();
        assert!(
            direct.to_string().starts_with("sslnegotiation: "),
            "{direct}"
        );
        "host=h sslnegotiation=postgres channel_binding=require"
            .parse::<PgUrl>()
            .unwrap();
    }

    #[test]
    fn a_bad_tls_key_names_the_file_line_and_key() {
        let err = parse("[primary]\nurl = \"postgres://h/db?sslmode=verify-fulll\"\n").unwrap_err();
        assert!(
            err.starts_with(
                "pgbridge.toml:2:7: primary.url: sslmode: unknown value \"verify-fulll\""
            ),
            "{err}"
        );
        let text = "[primary]\nurl = \"postgres://h/db\"\n[secondary]\n\
                    url = \"host=h sslmode=verify-ca sslrootcert=/nonexistent/ca.pem\"\n";
        let err = parse(text).unwrap_err();
        assert!(
            err.starts_with(
                "pgbridge.toml:4:7: secondary.url: sslrootcert: cannot read /nonexistent/ca.pem: "
            ),
            "{err}"
        );
    }
}
