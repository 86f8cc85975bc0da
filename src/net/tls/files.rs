//! The files behind a url's TLS keys, found and read as libpq finds them: `sslrootcert`, else
//! `~/.postgresql/root.crt` when it exists (required by the verify modes), `system` for the
//! system's bundle; `sslcert`, else `~/.postgresql/postgresql.crt` when it exists, with its key
//! (`sslkey`, else `~/.postgresql/postgresql.key`), which no one else may read. A file the url
//! names itself must be readable: a typo is a config error, not a silently weaker check.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::client::{root_store, ClientTlsError, SslMode, TlsSettings};
use super::pem::{self, PemError};

/// Where the system's trusted roots may be, when `SSL_CERT_FILE` does not say (Debian and
/// Ubuntu, Fedora and RHEL, openSUSE, Alpine and the BSDs).
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The root certificates a server is checked against, and their file.
pub(super) struct Roots {
    pub(super) path: PathBuf,
    pub(super) store: RootCertStore,
}

/// The client's own certificate chain and key, for servers that ask for one.
pub(super) struct ClientFiles {
    pub(super) certs: Vec<CertificateDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
}

/// The root certificates, if any: `rootcert` as given, else the default file in `dir` when it
/// exists. The verify modes need them.
pub(super) fn roots(
    rootcert: Option<&str>,
    dir: Option<&Path>,
    mode: SslMode,
) -> Result<Option<Roots>, ClientTlsError> {
    let verifies = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    let path = match rootcert {
        Some("system") => system_bundle()?,
        Some(given) => PathBuf::from(given),
        None => {
            let default = dir.map_or_else(
                || PathBuf::from("~/.postgresql/root.crt"),
                |d| d.join("root.crt"),
            );
            if default.exists() {
                default
            } else if verifies {
                return Err(ClientTlsError::NoRootCert {
                    path: default,
                    mode,
                });
            } else {
                return Ok(None);
            }
        }
    };
    let store = root_store(certs("sslrootcert", &path)?);
    if store.is_empty() {
        return Err(ClientTlsError::Empty {
            key: "sslrootcert",
            path,
            what: "usable root certificate",
        });
    }
    Ok(Some(Roots { path, store }))
}

/// The client's certificate and key, if a certificate is given or the default one exists.
pub(super) fn client(
    settings: &TlsSettings,
    dir: Option<&Path>,
) -> Result<Option<ClientFiles>, ClientTlsError> {
    let cert = match (&settings.cert, dir) {
        (Some(given), _) => given.clone(),
        (None, Some(dir)) if dir.join("postgresql.crt").exists() => dir.join("postgresql.crt"),
        (None, _) => return Ok(None),
    };
    let certs = certs("sslcert", &cert)?;
    let key = match (&settings.key, dir) {
        (Some(given), _) => given.clone(),
        (None, Some(dir)) if dir.join("postgresql.key").exists() => dir.join("postgresql.key"),
        (None, dir) => {
            let path = dir.map_or_else(
                || "~/.postgresql/postgresql.key".into(),
                |d| d.join("postgresql.key"),
            );
            return Err(ClientTlsError::NoKey(path));
        }
    };
    check_key_access(&key)?;
    let key = pem::key(&key).map_err(|e| pem_error("sslkey", &key, e))?;
    Ok(Some(ClientFiles { certs, key }))
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientTlsError> {
    pem::certs(path).map_err(|e| pem_error(key, path, e))
}

fn pem_error(key: &'static str, path: &Path, e: PemError) -> ClientTlsError {
    let path = path.to_path_buf();
    match e {
        PemError::Read(source) => ClientTlsError::Read { key, path, source },
        PemError::Empty(what) => ClientTlsError::Empty { key, path, what },
    }
}

/// libpq's rule for a private key file: no access for group or others when it is the user's
/// own, at most group read when root owns it.
fn check_key_access(path: &Path) -> Result<(), ClientTlsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| ClientTlsError::Read {
        key: "sslkey",
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let mode = meta.mode();
    let too_open =
        (meta.uid() == euid && mode & 0o077 != 0) || (meta.uid() == 0 && mode & 0o037 != 0);
    if too_open {
        return Err(ClientTlsError::KeyAccess(path.to_path_buf()));
    }
    Ok(())
}

/// The system's bundle of trusted roots: `SSL_CERT_FILE`, else the first that exists of the
/// usual places.
fn system_bundle() -> Result<PathBuf, ClientTlsError> {
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        return Ok(PathBuf::from(file));
    }
    SYSTEM_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| ClientTlsError::NoSystemRoots {
            looked: SYSTEM_BUNDLES.join(", "),
        })
}
