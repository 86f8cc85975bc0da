//! TLS for pgbridge's own tokio-postgres connections (the applier, in-doubt resolution, privilege
//! checks, shadow reads, the online rule checks), and their cancel requests: a `MakeTlsConnect`
//! on tokio-rustls, and [`connect`], which makes libpq's attempts in order (tokio-postgres knows
//! neither `allow` nor a plain retry after a failed `prefer`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, Socket};
use tracing::debug;

use super::binding::tls_server_end_point;
use super::client::{ClientTls, Connector};
use super::handshake::{describe, retry_after, Attempt, ClientTlsStream};

/// A tokio-postgres connection made with [`connect`]; spawn it.
pub type PgConnection = tokio_postgres::Connection<Socket, RustlsStream>;

/// Makes the TLS connector of each tokio-postgres connection or cancel request.
#[derive(Clone)]
pub struct MakeRustls {
    inner: Option<Arc<Connector>>,
    /// Set when a handshake was begun (the server answered `S`).
    began: Arc<AtomicBool>,
}

impl MakeRustls {
    pub fn new(tls: &ClientTls) -> MakeRustls {
        MakeRustls {
            inner: tls.inner.clone(),
            began: Arc::default(),
        }
    }

    fn began(&self) -> bool {
        self.began.load(Ordering::Relaxed)
    }
}

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, _host: &str) -> Result<RustlsConnect, io::Error> {
        // The url has one host, and the connector already has its name. tokio-postgres asks for
        // a connector for plain connections too (sslmode=disable, a Unix-domain socket), before
        // it looks at the sslmode: refusing here would fail them all.
        Ok(RustlsConnect {
            inner: self.inner.clone(),
            began: self.began.clone(),
        })
    }
}

/// The TLS connector of one connection; without `inner` the connection is plain, and never
/// starts TLS.
pub struct RustlsConnect {
    inner: Option<Arc<Connector>>,
    began: Arc<AtomicBool>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        self.began.store(true, Ordering::Relaxed);
        Box::pin(async move {
            let Some(inner) = self.inner else {
                return Err(io::Error::other("TLS is not used for this url"));
            };
            match inner.connector.connect(inner.name.clone(), stream).await {
                Ok(tls) => Ok(RustlsStream(Box::new(tls))),
                Err(e) => Err(io::Error::other(describe(&inner, &e))),
            }
        })
    }
}

/// A TLS stream of a tokio-postgres connection, with its channel binding data.
pub struct RustlsStream(Box<ClientTlsStream<Socket>>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| tls_server_end_point(cert))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// tokio-postgres's sslmode for one attempt (TLS itself is [`MakeRustls`]'s).
fn pg_ssl_mode(attempt: Attempt) -> PgSslMode {
    match attempt {
        Attempt::Plain => PgSslMode::Disable,
        Attempt::TlsIfOffered => PgSslMode::Prefer,
        Attempt::TlsRequired => PgSslMode::Require,
    }
}

/// Connects as `config` says, with TLS as `tls` says, making libpq's attempts in order: the next
/// one after a server's refusal, or after a failed handshake under `prefer`.
pub async fn connect(
    config: &tokio_postgres::Config,
    tls: &ClientTls,
) -> Result<(Client, PgConnection), tokio_postgres::Error> {
    let attempts = tls.attempts();
    let mut config = config.clone();
    for (i, &attempt) in attempts.iter().enumerate() {
        config.ssl_mode(pg_ssl_mode(attempt));
        let make = MakeRustls::new(tls);
        let error = match config.connect(make.clone()).await {
            Ok(connected) => return Ok(connected),
            Err(e) => e,
        };
        let refused = error.as_db_error().is_some();
        if !retry_after(attempt, make.began(), refused) || i + 1 == attempts.len() {
            return Err(error);
        }
        debug!(%error, sslmode = %tls.mode(), "connection attempt failed, trying the next one");
    }
    unreachable!("every url makes at least one attempt")
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::protocol::messages::{error_response, Severity};
    use crate::protocol::startup::SSL_REQUEST_CODE;

    /// A server that takes one connection and refuses its StartupMessage as pg_hba does; it
    /// fails the test if the first message is an SSLRequest.
    async fn refusing_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let len = s.read_u32().await.unwrap() as usize;
            let mut body = vec![0u8; len - 4];
            s.read_exact(&mut body).await.unwrap();
            assert_ne!(
                body[..4],
                SSL_REQUEST_CODE.to_be_bytes(),
                "TLS was asked for"
            );
            let refusal = error_response(Severity::Fatal, "28000", "no pg_hba.conf entry");
            s.write_all(&refusal).await.unwrap();
        });
        port
    }

    #[tokio::test]
    async fn sslmode_disable_connects_in_clear() {
        let port = refusing_server().await;
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(port).user("u");
        let Err(e) = connect(&config, &ClientTls::disabled()).await else {
            panic!("the server refused the connection");
        };
        // The server's own refusal, not a TLS error before anything was sent.
        assert_eq!(e.code().map(|c| c.code()), Some("28000"), "{e:?}");
        assert_eq!(
            crate::net::error_text(&e),
            "db error: FATAL: no pg_hba.conf entry"
        );
    }
}
