//! A session's own connection to the primary: TCP or a Unix-domain socket, TLS as the
//! primary's url says, and the client's StartupMessage, unchanged.
//!
//! libpq's attempts are made in order (`net/tls/handshake.rs`). When a later attempt could
//! follow a refusal (`allow` after its plain attempt, `prefer` over TLS), the primary's first
//! reply is read here before the relay starts: an ErrorResponse (pg_hba refusing the connection
//! as it is) means the next attempt, anything else goes to the client first thing. When every
//! attempt failed, the client gets the primary's own refusal if there was one.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use crate::instance::Instance;
use crate::net::addr::ServerStream;
use crate::net::tls::{retry_after, Attempt, ConnectError};
use crate::protocol::frame::HEADER_LEN;

/// The largest first reply read here: an authentication request or an ErrorResponse.
const MAX_FIRST_REPLY: usize = 64 * 1024;

/// The connection, with the startup sent.
pub(super) struct Opened {
    pub(super) stream: ServerStream,
    /// The primary's first reply when it was read to decide on another attempt; the relay
    /// sends it on first.
    pub(super) first: Bytes,
}

/// Why there is no connection to the primary.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the primary closed the connection during startup")]
    Closed,
    #[error("the primary sent an invalid message during startup")]
    Invalid,
}

/// One attempt that did not give a session.
enum Failed {
    /// The primary answered the startup with an ErrorResponse (in `first`).
    Refused(Opened),
    Open(OpenError),
}

/// Connects to the primary and sends the client's `startup`.
pub(super) async fn open(instance: &Instance, startup: &[u8]) -> Result<Opened, OpenError> {
    let tls = instance.config.primary.url.tls();
    let attempts = tls.attempts();
    let mut refusal = None;
    for (i, &attempt) in attempts.iter().enumerate() {
        let more = i + 1 < attempts.len();
        let error = match attempt_once(instance, attempt, startup, more).await {
            Ok(opened) => return Ok(opened),
            Err(Failed::Refused(opened)) => {
                debug!(sslmode = %tls.mode(), ?attempt, "the primary refused the attempt, trying the next one");
                refusal = Some(opened);
                continue;
            }
            Err(Failed::Open(e)) => e,
        };
        let handshake_failed = matches!(&error, OpenError::Connect(e) if e.handshake_failed());
        if !more || !retry_after(attempt, handshake_failed, false) {
            return refusal.ok_or(error);
        }
        debug!(%error, ?attempt, "connecting to the primary failed, trying the next attempt");
    }
    refusal.ok_or(OpenError::Closed)
}

/// One attempt: connect, TLS as `attempt` says, the startup; with `more` attempts to come, the
/// first reply too when a refusal would lead to the next.
async fn attempt_once(
    instance: &Instance,
    attempt: Attempt,
    startup: &[u8],
    more: bool,
) -> Result<Opened, Failed> {
    let url = &instance.config.primary.url;
    let timeout = instance.config.limits.connect_timeout_secs;
    let mut stream = url
        .tls()
        .open(url.server_addr(), "primary", attempt, timeout)
        .await
        .map_err(|e| Failed::Open(e.into()))?;
    if stream.write_all(startup).await.is_err() || stream.flush().await.is_err() {
        return Err(Failed::Open(OpenError::Closed));
    }
    let encrypted = matches!(stream, ServerStream::Tls(_));
    if !more || !retry_after(attempt, encrypted, true) {
        return Ok(Opened {
            stream,
            first: Bytes::new(),
        });
    }
    let first = match tokio::time::timeout(timeout, first_reply(&mut stream)).await {
        Ok(reply) => reply.map_err(Failed::Open)?,
        Err(_) => return Err(Failed::Open(OpenError::Closed)),
    };
    let refused = first[0] == b'E';
    let opened = Opened { stream, first };
    if refused {
        return Err(Failed::Refused(opened));
    }
    Ok(opened)
}

/// The primary's first frame, whole, and nothing after it.
async fn first_reply(stream: &mut ServerStream) -> Result<Bytes, OpenError> {
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|_| OpenError::Closed)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=MAX_FIRST_REPLY).contains(&len) {
        return Err(OpenError::Invalid);
    }
    let mut frame = BytesMut::zeroed(len + 1);
    frame[..HEADER_LEN].copy_from_slice(&header);
    stream
        .read_exact(&mut frame[HEADER_LEN..])
        .await
        .map_err(|_| OpenError::Closed)?;
    Ok(frame.freeze())
}
