//! Reading PEM files: certificate chains and private keys, for the acceptor's `[tls]` files and
//! the `sslrootcert`, `sslcert` and `sslkey` files of a url alike. The caller names the file and
//! the setting in its own error.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{0}")]
    Read(#[from] std::io::Error),
    #[error("holds no {0}")]
    Empty(&'static str),
}

/// Every certificate in the file, at least one.
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem = std::fs::read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..]).collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(PemError::Empty("PEM certificate"));
    }
    Ok(certs)
}

/// The first private key in the file (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let pem = std::fs::read(path)?;
    rustls_pemfile::private_key(&mut &pem[..])?.ok_or(PemError::Empty("PEM private key"))
}
