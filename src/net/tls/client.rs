//! The client side of TLS to a PostgreSQL server, as a url's libpq keys ask for it: `sslmode`
//! and the `sslrootcert`, `sslcert` and `sslkey` files, read once when the config is read (with
//! libpq's defaults under `~/.postgresql/`) into one rustls configuration per url.
//!
//! What each mode checks follows libpq: `verify-full` the chain and the host name, `verify-ca`
//! the chain; the weaker modes check the chain too when a root certificate file is there (libpq's
//! compatibility rule), and nothing otherwise. Over a Unix-domain socket libpq ignores sslmode.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::files::{self, ClientFiles, Roots};
use super::verify::{AnyCertificate, ChainOnly};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    /// libpq's default.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The modes that refuse to talk without TLS.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ClientTlsError;

    fn from_str(s: &str) -> Result<SslMode, ClientTlsError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(ClientTlsError::Mode(other.to_string())),
        })
    }
}

/// A url's TLS keys, as written (`None`: not given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: Option<SslMode>,
    /// A PEM file of root certificates, or `system` for the system's trusted roots.
    pub rootcert: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A url's TLS settings that cannot be used. Each message starts with the url key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error(
        "sslmode: unknown value {0:?} (disable, allow, prefer, require, verify-ca or verify-full)"
    )]
    Mode(String),
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {} holds no {what}", path.display())]
    Empty {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error(
        "sslrootcert: root certificate file {} does not exist; give sslrootcert, \
         sslrootcert=system for the system's trusted roots, or an sslmode that does not verify \
         the server (sslmode={mode} does)", path.display()
    )]
    NoRootCert { path: PathBuf, mode: SslMode },
    #[error("sslrootcert: no system certificate bundle found (looked for {looked})")]
    NoSystemRoots { looked: String },
    #[error("sslmode: weak sslmode \"{0}\" may not be used with sslrootcert=system (use \"verify-full\")")]
    WeakWithSystem(SslMode),
    #[error("sslkey: certificate present, but not private key file {}", .0.display())]
    NoKey(PathBuf),
    #[error(
        "sslkey: private key file {} has group or world access; file must have permissions \
         u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or \
         less if owned by root", .0.display()
    )]
    KeyAccess(PathBuf),
    #[error("host: {0:?} is not a name a server certificate can be checked against")]
    ServerName(String),
    #[error("sslcert: the certificate and key cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Nothing,
    /// Signed by a root certificate of `sslrootcert`.
    Chain,
    /// And issued for the url's host.
    Full,
}

/// How one url's connections use TLS: the mode, and the connector when TLS may be used at all.
#[derive(Clone)]
pub struct ClientTls {
    mode: SslMode,
    /// `None` when TLS is never used: sslmode=disable, or a Unix-domain socket.
    pub(super) inner: Option<Arc<Connector>>,
}

/// The rustls side of a url that may use TLS.
pub(super) struct Connector {
    pub(super) connector: TlsConnector,
    pub(super) name: ServerName<'static>,
    pub(super) host: String,
    pub(super) check: Check,
    /// The root certificates' file, for messages.
    pub(super) roots: Option<PathBuf>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .field("check", &self.check())
            .finish()
    }
}

impl Default for ClientTls {
    /// Plain connections only.
    fn default() -> Self {
        ClientTls::disabled()
    }
}

impl ClientTls {
    /// Never TLS (sslmode=disable).
    pub fn disabled() -> ClientTls {
        ClientTls {
            mode: SslMode::Disable,
            inner: None,
        }
    }

    /// The TLS of a url whose host is `host` (`None`: a Unix-domain socket), with libpq's
    /// default files under `$HOME/.postgresql/`.
    pub fn new(settings: &TlsSettings, host: Option<&str>) -> Result<ClientTls, ClientTlsError> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        ClientTls::with_home(settings, host, home.as_deref())
    }

    /// As [`ClientTls::new`], the default files under `home` (none without one).
    pub fn with_home(
        settings: &TlsSettings,
        host: Option<&str>,
        home: Option<&Path>,
    ) -> Result<ClientTls, ClientTlsError> {
        let system = settings.rootcert.as_deref() == Some("system");
        let mode = match settings.mode {
            Some(mode) if system && mode != SslMode::VerifyFull => {
                return Err(ClientTlsError::WeakWithSystem(mode))
            }
            Some(mode) => mode,
            None if system => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        let Some(host) = host.filter(|_| mode != SslMode::Disable) else {
            return Ok(ClientTls { mode, inner: None });
        };
        let dir = home.map(|h| h.join(".postgresql"));
        let roots = files::roots(settings.rootcert.as_deref(), dir.as_deref(), mode)?;
        let client = files::client(settings, dir.as_deref())?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| ClientTlsError::ServerName(host.to_string()))?;
        let check = match (&roots, mode) {
            (_, SslMode::VerifyFull) => Check::Full,
            (Some(_), _) => Check::Chain,
            (None, _) => Check::Nothing,
        };
        let roots_file = roots.as_ref().map(|r| r.path.clone());
        let config = rustls_config(check, roots, client)?;
        let inner = Connector {
            connector: TlsConnector::from(Arc::new(config)),
            name,
            host: host.to_string(),
            check,
            roots: roots_file,
        };
        Ok(ClientTls {
            mode,
            inner: Some(Arc::new(inner)),
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// What is checked of the server's certificate (nothing when TLS is never used).
    pub fn check(&self) -> Check {
        self.inner.as_ref().map_or(Check::Nothing, |c| c.check)
    }

    /// Whether connections may use TLS at all.
    pub fn may_encrypt(&self) -> bool {
        self.inner.is_some()
    }
}

/// The rustls configuration for a check, the roots it checks against and the client's own
/// certificate; ALPN `postgresql`, as libpq sends it.
fn rustls_config(
    check: Check,
    roots: Option<Roots>,
    client: Option<ClientFiles>,
) -> Result<ClientConfig, ClientTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let store = roots.map(|r| Arc::new(r.store));
    let builder = match (check, store) {
        (Check::Full, Some(store)) => builder.with_root_certificates(store),
        (Check::Chain, Some(store)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
        }
        _ => {
            let any = AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(any))
        }
    };
    let mut config = match client {
        Some(ClientFiles { certs, key }) => builder.with_client_auth_cert(certs, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// A root store of every certificate in `certs` that parses.
pub(super) fn root_store(certs: Vec<CertificateDer<'static>>) -> RootCertStore {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(certs);
    store
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tls::testing::{write_key, Pki};
    use crate::net::tls::Attempt;

    fn settings(mode: Option<SslMode>, rootcert: Option<&Path>) -> TlsSettings {
        TlsSettings {
            mode,
            rootcert: rootcert.map(|p| p.display().to_string()),
            ..TlsSettings::default()
        }
    }

    fn build(s: &TlsSettings, home: Option<&Path>) -> Result<ClientTls, String> {
        ClientTls::with_home(s, Some("db.example"), home).map_err(|e| e.to_string())
    }

    #[test]
    fn each_mode_makes_libpqs_attempts_and_checks() {
        let pki = Pki::new();
        let cases = [
            (
                SslMode::Disable,
                None,
                &[Attempt::Plain][..],
                Check::Nothing,
            ),
            (
                SslMode::Allow,
                None,
                &[Attempt::Plain, Attempt::TlsRequired],
                Check::Nothing,
            ),
            (
                SslMode::Prefer,
                None,
                &[Attempt::TlsIfOffered, Attempt::Plain],
                Check::Nothing,
            ),
            (
                SslMode::Require,
                None,
                &[Attempt::TlsRequired],
                Check::Nothing,
            ),
            // With a root certificate file, the weaker modes check the chain (libpq's rule).
            (
                SslMode::Require,
                Some(&pki.ca),
                &[Attempt::TlsRequired],
                Check::Chain,
            ),
            (
                SslMode::VerifyCa,
                Some(&pki.ca),
                &[Attempt::TlsRequired],
                Check::Chain,
            ),
            (
                SslMode::VerifyFull,
                Some(&pki.ca),
                &[Attempt::TlsRequired],
                Check::Full,
            ),
        ];
        for (mode, root, attempts, check) in cases {
            let tls = build(&settings(Some(mode), root.map(|p| p.as_path())), None).unwrap();
            assert_eq!(tls.attempts(), attempts, "{mode}");
            assert_eq!(tls.check(), check, "{mode}");
        }
        // libpq's default is prefer; over a Unix-domain socket sslmode is ignored.
        assert_eq!(
            build(&TlsSettings::default(), None).unwrap().mode(),
            SslMode::Prefer
        );
        let full = settings(Some(SslMode::VerifyFull), None);
        let unix = ClientTls::with_home(&full, None, None).unwrap();
        assert_eq!(unix.attempts(), &[Attempt::Plain]);
        assert!(!unix.may_encrypt());
    }

    #[test]
    fn the_default_files_are_libpqs() {
        let pki = Pki::new();
        let home = tempfile::tempdir().unwrap();
        let verify = settings(Some(SslMode::VerifyCa), None);
        let err = build(&verify, Some(home.path())).unwrap_err();
        let default = home.path().join(".postgresql/root.crt");
        assert!(
            err.starts_with("sslrootcert: root certificate file "),
            "{err}"
        );
        assert!(err.contains(&default.display().to_string()), "{err}");
        // Once ~/.postgresql/root.crt exists, it is used, and checks the chain even for prefer.
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        std::fs::copy(&pki.ca, &default).unwrap();
        assert_eq!(
            build(&verify, Some(home.path())).unwrap().check(),
            Check::Chain
        );
        let prefer = build(&TlsSettings::default(), Some(home.path())).unwrap();
        assert_eq!(prefer.check(), Check::Chain);
        // A client certificate there needs its key there too.
        let dir = home.path().join(".postgresql");
        std::fs::copy(&pki.client_cert, dir.join("postgresql.crt")).unwrap();
        let err = build(&TlsSettings::default(), Some(home.path())).unwrap_err();
        assert!(
            err.starts_with("sslkey: certificate present, but not private key file "),
            "{err}"
        );
        std::fs::copy(&pki.client_key, dir.join("postgresql.key")).unwrap();
        build(&TlsSettings::default(), Some(home.path())).unwrap();
    }

    #[test]
    fn files_named_in_the_url_must_be_usable() {
        let pki = Pki::new();
        let missing = pki.dir.path().join("missing.pem");
        let err = build(&settings(Some(SslMode::Require), Some(&missing)), None).unwrap_err();
        assert!(
            err.starts_with(&format!("sslrootcert: cannot read {}: ", missing.display())),
            "{err}"
        );
        let not_pem = pki.dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let err = build(&settings(Some(SslMode::VerifyFull), Some(&not_pem)), None).unwrap_err();
        assert!(err.ends_with("holds no PEM certificate"), "{err}");
        // A private key others may read is refused, as libpq refuses it.
        let mut with_cert = TlsSettings {
            cert: Some(pki.client_cert.clone()),
            key: Some(pki.client_key.clone()),
            ..TlsSettings::default()
        };
        build(&with_cert, None).unwrap();
        let open_key = pki.dir.path().join("open.key");
        std::fs::copy(&pki.client_key, &open_key).unwrap();
        std::fs::set_permissions(
            &open_key,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        with_cert.key = Some(open_key);
        let err = build(&with_cert, None).unwrap_err();
        assert!(err.contains("has group or world access"), "{err}");
        // A key that is not the certificate's.
        let other_key = pki.dir.path().join("other.key");
        write_key(
            &other_key,
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        with_cert.key = Some(other_key);
        let err = build(&with_cert, None).unwrap_err();
        assert!(
            err.starts_with("sslcert: the certificate and key cannot be used"),
            "{err}"
        );
    }

    #[test]
    fn system_roots_go_with_verify_full_only() {
        let system = TlsSettings {
            mode: Some(SslMode::Require),
            rootcert: Some("system".into()),
            ..TlsSettings::default()
        };
        let err = build(&system, None).unwrap_err();
        assert_eq!(
            err,
            "sslmode: weak sslmode \"require\" may not be used with sslrootcert=system (use \"verify-full\")"
        );
        assert_eq!("verify-fulll".parse::<SslMode>().unwrap_err().to_string(),
            "sslmode: unknown value \"verify-fulll\" (disable, allow, prefer, require, verify-ca or verify-full)");
        for mode in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            assert_eq!(mode.parse::<SslMode>().unwrap().as_str(), mode);
        }
    }
}
