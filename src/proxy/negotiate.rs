//! Before the session: SSLRequest (TLS when `[tls]` is set, else `N`), PostgreSQL 17's direct
//! TLS, GSSENCRequest (`N`), CancelRequest (forwarded to the right backends, then the
//! connection closes), and finally the StartupMessage, read whole and kept as its bytes.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::stream::TlsStream;
use crate::instance::Instance;
use crate::net::cancel::send_cancel;
use crate::protocol::messages::{error_response, CancelKey, Severity};
use crate::protocol::startup::StartupPacket;
use crate::protocol::ProtocolError;

/// How long a cancel forwarded to the primary may take.
pub(super) const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) enum Negotiated {
    /// A CancelRequest was handled, or the client gave up: nothing more to do.
    Done,
    Plain(TcpStream, StartupPacket),
    Tls(Box<TlsStream>, StartupPacket),
}

pub(super) async fn negotiate(
    instance: &Instance,
    mut tcp: TcpStream,
) -> std::io::Result<Negotiated> {
    if let Some(acceptor) = &instance.tls {
        // PostgreSQL 17 clients with sslnegotiation=direct open with a TLS ClientHello.
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE {
            let tls = acceptor.accept(tcp).await?;
            if tls.get_ref().1.alpn_protocol() != Some(b"postgresql") {
                let mut tls = tls;
                let e = ProtocolError::violation("direct TLS without ALPN \"postgresql\"");
                return refuse(&mut tls, &e).await.map(|_| Negotiated::Done);
            }
            return startup_inside_tls(instance, tls).await;
        }
    }
    loop {
        let packet = match read_startup(&mut tcp).await? {
            Ok(p) => p,
            Err(e) => return refuse(&mut tcp, &e).await.map(|_| Negotiated::Done),
        };
        match packet {
            StartupPacket::SslRequest => match &instance.tls {
                Some(acceptor) => {
                    tcp.write_all(b"S").await?;
                    let tls = acceptor.accept(tcp).await?;
                    return startup_inside_tls(instance, tls).await;
                }
                None => tcp.write_all(b"N").await?,
            },
            StartupPacket::GssEncRequest => tcp.write_all(b"N").await?,
            StartupPacket::Cancel(key) => {
                forward_cancel(instance, &key).await;
                return Ok(Negotiated::Done);
            }
            p @ StartupPacket::Startup { .. } => return Ok(Negotiated::Plain(tcp, p)),
        }
    }
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

async fn startup_inside_tls(
    instance: &Instance,
    mut tls: TlsStream,
) -> std::io::Result<Negotiated> {
    match read_startup(&mut tls).await? {
        Ok(p @ StartupPacket::Startup { .. }) => Ok(Negotiated::Tls(Box::new(tls), p)),
        Ok(StartupPacket::Cancel(key)) => {
            forward_cancel(instance, &key).await;
            Ok(Negotiated::Done)
        }
        Ok(_) => {
            let e = ProtocolError::violation("SSL negotiation inside TLS");
            refuse(&mut tls, &e).await.map(|_| Negotiated::Done)
        }
        Err(e) => refuse(&mut tls, &e).await.map(|_| Negotiated::Done),
    }
}

/// Reads one startup-phase packet: the outer error is I/O, the inner a malformed packet.
async fn read_startup<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Result<StartupPacket, ProtocolError>> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let len = match StartupPacket::declared_len(header) {
        Ok(len) => len,
        Err(e) => return Ok(Err(e)),
    };
    let mut raw = BytesMut::zeroed(len);
    raw[..4].copy_from_slice(&header);
    stream.read_exact(&mut raw[4..]).await?;
    Ok(StartupPacket::decode(raw.freeze()))
}

async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, e: &ProtocolError) -> std::io::Result<()> {
    warn!(error = %e.message, sqlstate = e.sqlstate, "refused client");
    super::metrics::get().protocol_errors.increment(1);
    write_fatal(stream, e.sqlstate, &e.message).await
}

pub(super) async fn write_fatal<S: AsyncWrite + Unpin>(
    stream: &mut S,
    code: &str,
    message: &str,
) -> std::io::Result<()> {
    stream
        .write_all(&error_response(Severity::Fatal, code, message))
        .await?;
    stream.flush().await?;
    stream.shutdown().await
}

async fn forward_cancel(instance: &Instance, key: &CancelKey) {
    let metrics = super::metrics::get();
    match instance.cancels.lookup(key) {
        Some(targets) => {
            metrics.cancels_forwarded.increment(1);
            for target in targets {
                if let Err(e) = send_cancel(&target, CANCEL_TIMEOUT).await {
                    warn!(error = %e, server = %target.addr, "could not forward a cancel request");
                }
            }
        }
        None => {
            metrics.cancels_unknown.increment(1);
            debug!("cancel request with an unknown key ignored");
        }
    }
}
