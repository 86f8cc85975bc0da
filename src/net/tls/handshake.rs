//! Starting TLS on a connection to a PostgreSQL server: the SSLRequest, the server's `S` or
//! `N`, and the rustls handshake, with libpq's order of attempts per sslmode and failures
//! worded for the operator (the certificate not trusted, not for this host, ...).

use std::time::Duration;

use rustls::{AlertDescription, CertificateError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::client::{ClientTls, Connector, SslMode};
use crate::net::addr::{ServerAddr, ServerStream};
use crate::protocol::startup::SSL_REQUEST_CODE;

/// A TLS stream to a server.
pub type ClientTlsStream<S> = tokio_rustls::client::TlsStream<S>;

/// A connection after the TLS negotiation: encrypted, or plain when the mode allowed it.
pub enum Secured<S> {
    Plain(S),
    Tls(Box<ClientTlsStream<S>>),
}

/// How one connection attempt treats TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Plain,
    /// TLS when the server offers it, plain when it answers `N`.
    TlsIfOffered,
    TlsRequired,
}

/// Why TLS could not be started.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the server does not support SSL, but sslmode={0} requires it")]
    NotOffered(SslMode),
    #[error("the server answered the SSL request with {0:#04x}, not S or N")]
    Unexpected(u8),
    #[error("the SSL request failed: {0}")]
    Io(std::io::Error),
    /// The handshake failed; the text says why.
    #[error("{0}")]
    Tls(String),
}

/// Why a connection to a server could not be opened; the text names the server.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address could not be reached (the text from [`ServerAddr::connect_to`]).
    #[error("{0}")]
    Unreachable(String),
    #[error("pgbridge could not connect to the {what} at {addr}: {source}")]
    Tls {
        what: &'static str,
        addr: String,
        source: HandshakeError,
    },
}

impl ConnectError {
    /// The server answered `S` and the handshake failed.
    pub fn handshake_failed(&self) -> bool {
        matches!(
            self,
            ConnectError::Tls {
                source: HandshakeError::Tls(_),
                ..
            }
        )
    }
}

/// Whether libpq makes the next attempt after `attempt` failed: after a server's refusal of a
/// plain connection (`allow`), after any failure once TLS was begun (`prefer`).
pub fn retry_after(attempt: Attempt, tls_began: bool, refused: bool) -> bool {
    match attempt {
        Attempt::Plain => refused,
        Attempt::TlsIfOffered => tls_began,
        Attempt::TlsRequired => false,
    }
}

impl ClientTls {
    /// Connects to `addr` (named `what` in errors) and negotiates TLS as `attempt` says, all
    /// within `timeout`. A Unix-domain socket is always plain, as libpq has it.
    pub async fn open(
        &self,
        addr: &ServerAddr,
        what: &'static str,
        attempt: Attempt,
        timeout: Duration,
    ) -> Result<ServerStream, ConnectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = addr
            .connect_to(what, timeout)
            .await
            .map_err(ConnectError::Unreachable)?;
        let ServerStream::Tcp(tcp) = stream else {
            return Ok(stream);
        };
        let tls_error = |source| ConnectError::Tls {
            what,
            addr: addr.to_string(),
            source,
        };
        let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
        match tokio::time::timeout_at(deadline, self.secure(tcp, attempt)).await {
            Ok(Ok(Secured::Plain(tcp))) => Ok(ServerStream::Tcp(tcp)),
            Ok(Ok(Secured::Tls(tls))) => Ok(ServerStream::Tls(tls)),
            Ok(Err(e)) => Err(tls_error(e)),
            Err(_) => Err(tls_error(HandshakeError::Io(timed_out()))),
        }
    }

    /// The attempts libpq makes, in order. The next one is made when the server refuses the one
    /// before during startup, or (`prefer`) when the TLS handshake fails.
    pub fn attempts(&self) -> &'static [Attempt] {
        match self.mode() {
            _ if !self.may_encrypt() => &[Attempt::Plain],
            SslMode::Disable => &[Attempt::Plain],
            SslMode::Allow => &[Attempt::Plain, Attempt::TlsRequired],
            SslMode::Prefer => &[Attempt::TlsIfOffered, Attempt::Plain],
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => &[Attempt::TlsRequired],
        }
    }

    /// Negotiates TLS on `stream` as `attempt` says: SSLRequest, then the handshake when the
    /// server answers `S`.
    pub async fn secure<S>(
        &self,
        mut stream: S,
        attempt: Attempt,
    ) -> Result<Secured<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let inner = match (&self.inner, attempt) {
            (_, Attempt::Plain) | (None, _) => return Ok(Secured::Plain(stream)),
            (Some(inner), _) => inner,
        };
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8u32.to_be_bytes());
        request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        stream
            .write_all(&request)
            .await
            .map_err(HandshakeError::Io)?;
        let mut answer = [0u8; 1];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(HandshakeError::Io)?;
        match answer[0] {
            b'S' => {}
            b'N' if attempt == Attempt::TlsIfOffered => return Ok(Secured::Plain(stream)),
            b'N' => return Err(HandshakeError::NotOffered(self.mode())),
            other => return Err(HandshakeError::Unexpected(other)),
        }
        match inner.connector.connect(inner.name.clone(), stream).await {
            Ok(tls) => Ok(Secured::Tls(Box::new(tls))),
            Err(e) => Err(HandshakeError::Tls(describe(inner, &e))),
        }
    }
}

/// The handshake failure `e` in words: what is wrong with the server's certificate, or what the
/// server objected to.
pub(super) fn describe(inner: &Connector, e: &std::io::Error) -> String {
    let roots = || {
        inner
            .roots
            .as_ref()
            .map_or(String::new(), |p| format!(" (sslrootcert {})", p.display()))
    };
    let Some(rustls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return format!("the TLS handshake failed: {e}");
    };
    match rustls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => format!(
                "the server certificate is not trusted: no root certificate{} signed it",
                roots()
            ),
            CertificateError::NotValidForName => {
                format!(
                    "the server certificate is not valid for host {}",
                    inner.host
                )
            }
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "the server certificate is not valid for host {} (it is for {})",
                inner.host,
                presented
                    .iter()
                    .map(|n| bare_name(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server certificate has expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server certificate is not valid yet".to_string()
            }
            other => format!("the server certificate is not accepted: {other:?}"),
        },
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate (sslcert and sslkey)".to_string()
        }
        other => format!("the TLS handshake failed: {other}"),
    }
}

/// A name as rustls lists it (`DnsName("db.example")`), without the wrapping.
fn bare_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .and_then(|(_, inner)| inner.strip_suffix(')'))
        .map_or(presented, |inner| inner.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::net::tls::testing::Pki;
    use crate::net::tls::TlsSettings;

    /// A server that answers the SSLRequest with `answer`, then (for `S`) accepts TLS with a
    /// certificate for `names` and says hello.
    fn server(pki: &Pki, names: &[&str], answer: u8) -> tokio::io::DuplexStream {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let acceptor = pki.acceptor(names);
        tokio::spawn(async move {
            let mut request = [0u8; 8];
            server.read_exact(&mut request).await.unwrap();
            assert_eq!(&request[4..], &SSL_REQUEST_CODE.to_be_bytes());
            server.write_all(&[answer]).await.unwrap();
            if answer == b'S' {
                if let Ok(mut tls) = acceptor.accept(server).await {
                    let _ = tls.write_all(b"hello").await;
                    let _ = tls.flush().await;
                }
            }
        });
        client
    }

    fn tls(mode: SslMode, root: &Path) -> ClientTls {
        let settings = TlsSettings {
            mode: Some(mode),
            rootcert: Some(root.display().to_string()),
            ..TlsSettings::default()
        };
        ClientTls::with_home(&settings, Some("db.example"), None).unwrap()
    }

    async fn try_mode(mode: SslMode, root: &Path, pki: &Pki, names: &[&str]) -> Result<(), String> {
        let stream = server(pki, names, b'S');
        let attempt = tls(mode, root).attempts()[0];
        match tls(mode, root).secure(stream, attempt).await {
            Ok(Secured::Tls(mut s)) => {
                let mut hello = [0u8; 5];
                s.read_exact(&mut hello).await.unwrap();
                assert_eq!(&hello, b"hello");
                Ok(())
            }
            Ok(Secured::Plain(_)) => Err("plain".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[tokio::test]
    async fn the_certificate_is_checked_as_far_as_the_mode_says() {
        let pki = Pki::new();
        // The server's certificate is for another host.
        let other = ["other.example"];
        let err = try_mode(SslMode::VerifyFull, &pki.ca, &pki, &other)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "the server certificate is not valid for host db.example (it is for other.example)"
        );
        try_mode(SslMode::VerifyCa, &pki.ca, &pki, &other)
            .await
            .unwrap();
        try_mode(SslMode::VerifyFull, &pki.ca, &pki, &["db.example"])
            .await
            .unwrap();
        // Signed by a CA that sslrootcert does not hold.
        let err = try_mode(SslMode::VerifyCa, &pki.other_ca, &pki, &other)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            format!(
                "the server certificate is not trusted: no root certificate (sslrootcert {}) signed it",
                pki.other_ca.display()
            )
        );
        // require without a root certificate file trusts any certificate.
        let require = ClientTls::with_home(
            &TlsSettings {
                mode: Some(SslMode::Require),
                ..TlsSettings::default()
            },
            Some("db.example"),
            None,
        )
        .unwrap();
        let secured = require
            .secure(server(&pki, &other, b'S'), Attempt::TlsRequired)
            .await;
        assert!(matches!(secured, Ok(Secured::Tls(_))));
    }

    #[tokio::test]
    async fn a_server_without_ssl_is_refused_or_used_plain_as_the_mode_says() {
        let pki = Pki::new();
        let require = tls(SslMode::Require, &pki.ca);
        let err = require
            .secure(server(&pki, &[], b'N'), Attempt::TlsRequired)
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "the server does not support SSL, but sslmode=require requires it"
        );
        let prefer = tls(SslMode::Prefer, &pki.ca);
        let plain = prefer
            .secure(server(&pki, &[], b'N'), Attempt::TlsIfOffered)
            .await;
        assert!(matches!(plain, Ok(Secured::Plain(_))));
        let odd = prefer
            .secure(server(&pki, &[], b'E'), Attempt::TlsIfOffered)
            .await;
        assert!(matches!(odd, Err(HandshakeError::Unexpected(b'E'))));
    }

    #[test]
    fn names_lose_rustls_wrapping() {
        assert_eq!(bare_name("DnsName(\"db.example\")"), "db.example");
        assert_eq!(bare_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(bare_name("plain"), "plain");
    }

    #[test]
    fn the_next_attempt_follows_libpqs_rules() {
        assert!(
            retry_after(Attempt::Plain, false, true),
            "allow: refused plain, try TLS"
        );
        assert!(!retry_after(Attempt::Plain, false, false));
        assert!(
            retry_after(Attempt::TlsIfOffered, true, false),
            "prefer: TLS failed, try plain"
        );
        assert!(
            !retry_after(Attempt::TlsIfOffered, false, true),
            "prefer got N: it was plain"
        );
        assert!(!retry_after(Attempt::TlsRequired, true, true));
    }
}
