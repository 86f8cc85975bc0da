//! pgbridge's own wire connection to the secondary, for the reads it serves there.
//!
//! Reads served by the secondary go out as protocol messages the session builds (the client's
//! own Bind, with its parameter and result formats) and come back as frames that are passed to
//! the client as they are, so this connection speaks the protocol itself rather than through a
//! client library: TLS as the url's sslmode says (libpq's attempts, `net/tls/handshake.rs`),
//! startup with pgbridge's credentials from `[secondary] url` (trust, cleartext, md5 or
//! SCRAM-SHA-256, the exchange in [`crate::protocol::auth`]), then whole request batches
//! answered up to their ReadyForQuery. This file only does the I/O.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tracing::debug;

use crate::config::PgUrl;
use crate::net::addr::ServerStream;
use crate::net::tls::{retry_after, Attempt, ConnectError};
use crate::protocol::auth::{AuthError, ClientAuth, Step};
use crate::protocol::messages::{error_text, CancelKey};
use crate::protocol::startup::startup_message;
use crate::protocol::wire::declared_len;

/// Largest frame accepted from the secondary (a result row of 1 GB is PostgreSQL's own limit).
const MAX_FRAME: usize = 1 << 30;

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Stream for T {}

/// Why the secondary could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("the secondary refused pgbridge's login: {0}")]
    Login(String),
    #[error("the secondary connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the secondary broke the protocol: {0}")]
    Protocol(String),
    #[error("the answer is larger than pgbridge keeps")]
    TooLarge,
}

impl From<AuthError> for ConnError {
    fn from(e: AuthError) -> ConnError {
        match e {
            AuthError::Malformed(what) => ConnError::Protocol(what.into()),
            e => ConnError::Login(e.to_string()),
        }
    }
}

/// One open connection to the secondary.
pub struct Conn {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    /// The backend's cancel key (BackendKeyData).
    pub key: Option<CancelKey>,
}

impl Conn {
    /// Connects and logs in as the url's user, with `params` (name, value) as the session's
    /// startup settings (DateStyle, TimeZone, extra_float_digits, ...); makes libpq's attempts
    /// in the order the url's sslmode gives.
    pub async fn connect(
        url: &PgUrl,
        params: &[(String, String)],
        timeout: Duration,
    ) -> Result<Conn, ConnError> {
        let attempts = url.tls().attempts();
        let mut tried = 0;
        loop {
            let attempt = attempts[tried];
            tried += 1;
            let error = match Conn::attempt(url, attempt, params, timeout).await {
                Ok(conn) => return Ok(conn),
                Err(e) => e,
            };
            let tls_began = match &error {
                ConnError::Connect(e) => e.handshake_failed(),
                _ => attempt != Attempt::Plain,
            };
            let refused = matches!(error, ConnError::Login(_));
            if tried == attempts.len() || !retry_after(attempt, tls_began, refused) {
                return Err(error);
            }
            debug!(%error, "secondary connection attempt failed, trying the next one");
        }
    }

    /// One attempt: the connection, TLS as `attempt` says, and the login.
    async fn attempt(
        url: &PgUrl,
        attempt: Attempt,
        params: &[(String, String)],
        timeout: Duration,
    ) -> Result<Conn, ConnError> {
        let addr = url.server_addr();
        let stream: Box<dyn Stream> =
            match url.tls().open(addr, "secondary", attempt, timeout).await? {
                ServerStream::Tcp(s) => Box::new(s),
                ServerStream::Unix(s) => Box::new(s),
                ServerStream::Tls(s) => Box::new(s),
            };
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            key: None,
        };
        match tokio::time::timeout(timeout, conn.login(url.pg_config(), params)).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnError::Login("timed out".into())),
        }
        Ok(conn)
    }

    /// Sends the StartupMessage and answers the Authentication requests ([`ClientAuth`] says
    /// how), up to the first ReadyForQuery; keeps the backend's cancel key.
    async fn login(
        &mut self,
        config: &tokio_postgres::Config,
        params: &[(String, String)],
    ) -> Result<(), ConnError> {
        let user = config.get_user().unwrap_or("postgres");
        let database = config.get_dbname().unwrap_or(user);
        let startup = [("user", user), ("database", database)]
            .into_iter()
            .chain(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.send(&startup_message(startup)).await?;
        let mut auth = ClientAuth::new(user, config.get_password().unwrap_or_default());
        loop {
            let frame = self.frame().await?;
            match frame[0] {
                b'R' => match auth.step(&frame)? {
                    Step::Send(reply) => self.send(&reply).await?,
                    Step::Verified | Step::Done => {}
                },
                b'E' => return Err(ConnError::Login(error_text(&frame))),
                b'K' => self.key = CancelKey::from_backend_key_data(&frame),
                b'Z' => return Ok(()),
                _ => {}
            }
        }
    }

    /// Writes a batch of requests.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next whole frame (type byte and length included).
    pub async fn frame(&mut self) -> Result<Bytes, ConnError> {
        loop {
            if let Some(len) = declared_len(&self.buf) {
                let len = len as usize;
                if !(4..=MAX_FRAME).contains(&len) {
                    return Err(ConnError::Protocol(format!("frame length {len}")));
                }
                if self.buf.len() > len {
                    return Ok(self.buf.split_to(len + 1).freeze());
                }
                self.buf.reserve(len + 1 - self.buf.len());
            } else {
                self.buf.reserve(8 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}
