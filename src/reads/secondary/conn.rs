//! pgbridge's own wire connection to the secondary, for the reads it serves there.
//!
//! Reads served by the secondary go out as protocol messages the session builds (the client's
//! own Bind, with its parameter and result formats) and come back as frames that are passed to
//! the client as they are, so this connection speaks the protocol itself rather than through a
//! client library: startup with pgbridge's credentials from `[secondary] url` (trust,
//! cleartext, md5 or SCRAM-SHA-256, the SCRAM exchange from `postgres-protocol`), then whole
//! request batches answered up to their ReadyForQuery.

use std::time::Duration;

use crate::net::addr::{ServerAddr, ServerStream};
use crate::protocol::messages::{error_fields, CancelKey};
use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted from the secondary (a result row of 1 GB is PostgreSQL's own limit).
const MAX_FRAME: usize = 1 << 30;

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Stream for T {}

/// Why the secondary could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{0}")]
    Connect(String),
    #[error("the secondary refused pgbridge's login: {0}")]
    Login(String),
    #[error("the secondary connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the secondary broke the protocol: {0}")]
    Protocol(String),
    #[error("the answer is larger than pgbridge keeps")]
    TooLarge,
}

/// One open connection to the secondary.
pub struct Conn {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    /// The backend's cancel key (BackendKeyData).
    pub key: Option<CancelKey>,
}

impl Conn {
    /// Connects and logs in as the config's user, with `params` (name, value) as the session's
    /// startup settings (DateStyle, TimeZone, extra_float_digits, ...).
    pub async fn connect(
        addr: &ServerAddr,
        config: &tokio_postgres::Config,
        params: &[(String, String)],
        timeout: Duration,
    ) -> Result<Conn, ConnError> {
        let stream: Box<dyn Stream> = match addr.connect_to("secondary", timeout).await {
            Ok(ServerStream::Tcp(s)) => Box::new(s),
            Ok(ServerStream::Unix(s)) => Box::new(s),
            Err(message) => return Err(ConnError::Connect(message)),
        };
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            key: None,
        };
        match tokio::time::timeout(timeout, conn.login(config, params)).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnError::Login("timed out".into())),
        }
        Ok(conn)
    }

    async fn login(
        &mut self,
        config: &tokio_postgres::Config,
        params: &[(String, String)],
    ) -> Result<(), ConnError> {
        let user = config.get_user().unwrap_or("postgres");
        let password = config.get_password().unwrap_or_default().to_vec();
        let mut body = BytesMut::new();
        body.put_u32(196_608);
        let mut put = |k: &str, v: &str| {
            body.extend_from_slice(k.as_bytes());
            body.put_u8(0);
            body.extend_from_slice(v.as_bytes());
            body.put_u8(0);
        };
        put("user", user);
        put("database", config.get_dbname().unwrap_or(user));
        for (k, v) in params {
            put(k, v);
        }
        body.put_u8(0);
        let mut startup = BytesMut::new();
        startup.put_u32(body.len() as u32 + 4);
        startup.extend_from_slice(&body);
        self.send(&startup).await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = self.frame().await?;
            match frame[0] {
                b'R' => {
                    let code = be_u32(&frame, 5)?;
                    let data = &frame[9..];
                    match code {
                        0 => {}
                        3 => self.send(&password_message(&password)).await?,
                        5 => {
                            let salt: [u8; 4] = data
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| ConnError::Protocol("short md5 salt".into()))?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                &password,
                                salt,
                            );
                            self.send(&password_message(hash.as_bytes())).await?
                        }
                        10 => {
                            let offered = data
                                .split(|&b| b == 0)
                                .any(|m| m == SCRAM_SHA_256.as_bytes());
                            if !offered {
                                return Err(ConnError::Login(
                                    "no supported SASL mechanism offered".into(),
                                ));
                            }
                            let s = ScramSha256::new(&password, ChannelBinding::unsupported());
                            let mut body = BytesMut::new();
                            body.extend_from_slice(SCRAM_SHA_256.as_bytes());
                            body.put_u8(0);
                            body.put_u32(s.message().len() as u32);
                            body.extend_from_slice(s.message());
                            self.send(&framed(b'p', &body)).await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ConnError::Protocol("SASLContinue without SASL".into())
                            })?;
                            s.update(data)
                                .map_err(|e| ConnError::Login(e.to_string()))?;
                            let reply = framed(b'p', s.message());
                            self.send(&reply).await?;
                        }
                        12 => {
                            let mut s = scram.take().ok_or_else(|| {
                                ConnError::Protocol("SASLFinal without SASL".into())
                            })?;
                            s.finish(data)
                                .map_err(|e| ConnError::Login(e.to_string()))?;
                        }
                        other => {
                            return Err(ConnError::Login(format!(
                                "unsupported authentication request {other}"
                            )))
                        }
                    }
                }
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
            if self.buf.len() >= 5 {
                let len = be_u32(&self.buf, 1)? as usize;
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

fn be_u32(b: &[u8], at: usize) -> Result<u32, ConnError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| ConnError::Protocol("short frame".into()))
}

fn framed(tag: u8, body: &[u8]) -> Bytes {
    crate::protocol::wire::framed(tag, body)
}

fn password_message(password: &[u8]) -> Bytes {
    let mut body = password.to_vec();
    body.push(0);
    framed(b'p', &body)
}

/// `SQLSTATE: message` of an ErrorResponse frame.
pub fn error_text(frame: &[u8]) -> String {
    let fields = error_fields(frame);
    let get = |c: u8| {
        fields
            .iter()
            .find(|(k, _)| *k == c)
            .map_or("", |(_, v)| v.as_str())
    };
    format!("{}: {}", get(b'C'), get(b'M'))
}

/// The SQLSTATE of an ErrorResponse frame.
pub fn error_code(frame: &[u8]) -> String {
    error_fields(frame)
        .into_iter()
        .find(|(k, _)| *k == b'C')
        .map(|(_, v)| v)
        .unwrap_or_default()
}
