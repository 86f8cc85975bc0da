//! TLS termination for clients that ask for it (SSLRequest, or PostgreSQL 17's direct TLS):
//! the acceptor built from `[tls]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use super::pem::{self, PemError};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[tls] cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("[tls] {path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("[tls] the certificate and key cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    fn pem(path: &Path, e: PemError) -> TlsError {
        let path = path.to_path_buf();
        match e {
            PemError::Read(source) => TlsError::Read { path, source },
            PemError::Empty(what) => TlsError::Empty { path, what },
        }
    }
}

/// The acceptor for `[tls]`: the certificate chain and key (PEM files), ALPN `postgresql` (for
/// clients that start TLS directly, PostgreSQL 17's `sslnegotiation=direct`).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = pem::certs(cert).map_err(|e| TlsError::pem(cert, e))?;
    let key = pem::key(key).map_err(|e| TlsError::pem(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
