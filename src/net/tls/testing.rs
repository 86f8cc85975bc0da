//! Certificates for the unit tests: a CA, a server certificate it signed, and a client
//! certificate, as PEM files in a temporary directory (the key files readable by their owner
//! only, as libpq wants them).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and what it signed, on disk.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: PathBuf,
    /// Another CA, which signed nothing here.
    pub(crate) other_ca: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

pub(crate) fn write_key(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, issuer) = ca("pgbridge test CA");
        let (other_pem, _) = ca("another CA");
        let ca = dir.path().join("ca.pem");
        let other_ca = dir.path().join("other-ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        std::fs::write(&other_ca, other_pem).unwrap();
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["pgbridge".to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let client_cert = dir.path().join("client.crt");
        let client_key = dir.path().join("client.key");
        std::fs::write(&client_cert, cert.pem()).unwrap();
        write_key(&client_key, &key.serialize_pem());
        Pki {
            dir,
            ca,
            other_ca,
            client_cert,
            client_key,
            issuer,
        }
    }

    /// A server certificate for `names`, signed by the CA, and its key.
    pub(crate) fn server(
        &self,
        names: &[&str],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let key = PrivatePkcs8KeyDer::from(key.serialize_der());
        (vec![cert.der().clone()], key.into())
    }

    /// A TLS acceptor with a server certificate for `names`.
    pub(crate) fn acceptor(&self, names: &[&str]) -> tokio_rustls::TlsAcceptor {
        let (certs, key) = self.server(names);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}
