//! One client session, from its first byte to its last.
//!
//! 1. Negotiation: SSLRequest (TLS when `[tls]` is set, else `N`), GSSENCRequest (`N`),
//!    CancelRequest (forwarded to the right backend, then the connection closes), and finally the
//!    StartupMessage.
//! 2. The connection to the primary, with the client's own StartupMessage bytes: the primary
//!    authenticates the client itself, whatever the method, through the relay.
//! 3. The relay ([`super::relay`]) until one side stops, then an orderly end: the client gets an
//!    ErrorResponse with a SQLSTATE when pgbridge is the one ending the session, and a query the
//!    client abandoned is cancelled on the primary so that its backend is released.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, info_span, warn, Instrument};

use super::relay::{self, ClientLimits, End, KeyExchange, Shared};
use crate::capture;
use crate::config::MirrorMode;
use crate::instance::Instance;
use crate::net::addr::ServerStream;
use crate::net::cancel::{send_cancel, BackendTarget, Registration};
use crate::protocol::messages::{error_response, sqlstate, CancelKey, Severity};
use crate::protocol::startup::StartupPacket;
use crate::protocol::ProtocolError;

/// How long a cancel forwarded to the primary may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one accepted connection. `permit` is `None` when the connection limit was reached: the
/// client is then refused with SQLSTATE 53300 once it has said who it is.
pub async fn serve(
    instance: Arc<Instance>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    id: u64,
) {
    let span = info_span!("session", id, %peer, user = tracing::field::Empty, database = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let startup_timeout = instance.config.limits.startup_timeout_secs;
        let negotiated =
            match tokio::time::timeout(startup_timeout, negotiate(&instance, tcp)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    debug!(error = %e, "startup failed");
                    return;
                }
                Err(_) => {
                    debug!("startup timed out");
                    return;
                }
            };
        match negotiated {
            Negotiated::Done => {}
            Negotiated::Plain(tcp, startup) => session(&instance, tcp, startup, permit, id).await,
            Negotiated::Tls(tls, startup) => session(&instance, *tls, startup, permit, id).await,
        }
    }
    .instrument(span)
    .await
}

type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

enum Negotiated {
    /// A CancelRequest was handled, or the client gave up: nothing more to do.
    Done,
    Plain(TcpStream, StartupPacket),
    Tls(Box<TlsStream>, StartupPacket),
}

async fn negotiate(instance: &Instance, mut tcp: TcpStream) -> std::io::Result<Negotiated> {
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

async fn write_fatal<S: AsyncWrite + Unpin>(
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

/// A stream that can be split into halves the two directions own.
pub trait SplitStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send;
    type Write: AsyncWrite + Unpin + Send;
    fn split_halves(self) -> (Self::Read, Self::Write);
}

impl SplitStream for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl SplitStream for tokio::net::UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn split_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl SplitStream for TlsStream {
    type Read = tokio::io::ReadHalf<TlsStream>;
    type Write = tokio::io::WriteHalf<TlsStream>;
    fn split_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// The primary's cancel key of this session, and the key handed to the client for it.
struct Keys<'a> {
    instance: &'a Instance,
    registration: Option<Registration>,
    primary: Option<BackendTarget>,
    /// The session's connection to the secondary, when it has one.
    alongside: crate::net::cancel::Alongside,
}

impl KeyExchange for Keys<'_> {
    fn exchange(&mut self, primary_key: CancelKey) -> Bytes {
        let target = BackendTarget {
            addr: self.instance.config.primary.url.server_addr().clone(),
            key: primary_key,
        };
        let registration = self
            .instance
            .cancels
            .register(target.clone(), Some(self.alongside.clone()));
        let frame = registration.client_key.to_backend_key_data();
        self.registration = Some(registration);
        self.primary = Some(target);
        frame
    }
}

async fn session<C: SplitStream>(
    instance: &Instance,
    mut client: C,
    startup: StartupPacket,
    permit: Option<OwnedSemaphorePermit>,
    session_id: u64,
) {
    let StartupPacket::Startup { raw, params, .. } = startup else {
        return;
    };
    let span = tracing::Span::current();
    span.record("user", params.get("user").map_or("", |s| s.as_str()));
    span.record(
        "database",
        params.get("database").map_or("", |s| s.as_str()),
    );
    let metrics = super::metrics::get();
    if permit.is_none() {
        metrics.refused_limit.increment(1);
        let limit = instance.config.limits.max_client_connections;
        warn!(limit, "refused client: connection limit reached");
        let message =
            format!("too many connections to pgbridge (limits.max_client_connections = {limit})");
        let _ = write_fatal(&mut client, sqlstate::TOO_MANY_CONNECTIONS, &message).await;
        return;
    }
    if instance.is_draining() {
        let _ = write_fatal(
            &mut client,
            sqlstate::ADMIN_SHUTDOWN,
            "pgbridge is shutting down",
        )
        .await;
        return;
    }
    let addr = instance.config.primary.url.server_addr();
    let primary = match addr
        .connect(instance.config.limits.connect_timeout_secs)
        .await
    {
        Ok(p) => p,
        Err(message) => {
            metrics.primary_connect_errors.increment(1);
            warn!(error = %message, "could not connect to the primary");
            let _ = write_fatal(&mut client, sqlstate::CONNECTION_FAILURE, &message).await;
            return;
        }
    };
    let started = Instant::now();
    let _active = metrics.session_started();
    let (end, keys) = match primary {
        ServerStream::Tcp(tcp) => {
            relay_until_end(instance, client, tcp, raw, &params, session_id).await
        }
        ServerStream::Unix(unix) => {
            relay_until_end(instance, client, unix, raw, &params, session_id).await
        }
    };
    info!(end = ?end, secs = started.elapsed().as_secs_f64(), "session ended");
    drop(keys);
    drop(permit);
}

/// Relays until one side stops, then ends the session as that side requires. Returns why it
/// ended, and the session's cancel key registration (dropped by the caller).
async fn relay_until_end<'p, C: SplitStream, P: SplitStream>(
    instance: &'p Instance,
    client: C,
    primary: P,
    startup: Bytes,
    params: &std::collections::BTreeMap<String, String>,
    session_id: u64,
) -> (End, Keys<'p>) {
    let metrics = super::metrics::get();
    let shared = Shared::new();
    let mut keys = Keys {
        instance,
        registration: None,
        primary: None,
        alongside: Default::default(),
    };
    let (mut client_r, mut client_w) = client.split_halves();
    let (mut primary_r, mut primary_w) = primary.split_halves();
    if primary_w.write_all(&startup).await.is_err() {
        let _ = write_fatal(
            &mut client_w,
            sqlstate::CONNECTION_FAILURE,
            "the primary closed the connection during startup",
        )
        .await;
        return (End::PrimaryClosed { reported: false }, keys);
    }
    let limits = ClientLimits {
        max_message_bytes: instance.config.limits.max_message_bytes,
    };
    let migration = instance.migration.as_ref();
    let mirror = migration.and_then(|m| m.mirror.as_ref());
    let capture_shared = capture::Shared::new(
        mirror.map(|m| m.journal.clone()),
        mirror.is_some_and(|m| m.mode == MirrorMode::Sync),
    )
    .with_shadow(migration.and_then(|m| m.shadow.clone()), session_id);
    let mut driver = migration.map(|m| {
        let driver = capture::Driver::new(
            &capture_shared,
            &m.analyzer,
            mirror.map(|m| &m.journal),
            &m.recorder,
            session_id,
        )
        .with_routing(&m.reads, &m.shared);
        match &m.serve {
            Some(opts) => driver.with_serving(
                crate::reads::secondary::SessionServer::new(
                    opts.clone(),
                    crate::reads::secondary::startup_settings(params.iter()),
                    keys.alongside.clone(),
                ),
                mirror.map(|m| &m.applier),
                params.get("user").cloned().unwrap_or_default(),
            ),
            None => driver,
        }
    });
    let capture_ctx = migration.map(|m| capture::Replies {
        shared: &capture_shared,
        recorder: &m.recorder,
        applier: mirror.map(|m| &m.applier),
        sync_timeout: mirror.map_or(Duration::ZERO, |m| m.sync_timeout),
        session: session_id,
    });
    let end = {
        let up = async {
            match driver.as_mut() {
                Some(d) => {
                    relay::client_to_primary_capturing(
                        &mut client_r,
                        &mut primary_w,
                        &shared,
                        &limits,
                        &metrics.bytes_to_primary,
                        d,
                    )
                    .await
                }
                None => {
                    relay::client_to_primary(
                        &mut client_r,
                        &mut primary_w,
                        &shared,
                        &limits,
                        &metrics.bytes_to_primary,
                    )
                    .await
                }
            }
        };
        let down = relay::primary_to_client(
            &mut primary_r,
            &mut client_w,
            &shared,
            &mut keys,
            &metrics.bytes_to_client,
            capture_ctx.as_ref(),
        );
        tokio::pin!(up, down);
        let mut drain = instance.drain_signal();
        let mut draining = false;
        let mut deadline = None;
        loop {
            tokio::select! {
                end = &mut up => break end,
                end = &mut down => break end,
                _ = drain.wait_for(|d| *d), if !draining => {
                    draining = true;
                    shared.start_draining();
                    deadline = Some(tokio::time::Instant::now() + instance.config.limits.shutdown_timeout_secs);
                    if shared.is_idle() && shared.established() {
                        break End::Drained;
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => break End::Drained,
            }
        }
    };
    drop(driver);
    finish(&end, &shared, &keys, &mut client_w, &mut primary_w).await;
    (end, keys)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Ends both connections as the reason requires.
async fn finish<CW, PW>(
    end: &End,
    shared: &Shared,
    keys: &Keys<'_>,
    client: &mut CW,
    primary: &mut PW,
) where
    CW: AsyncWrite + Unpin,
    PW: AsyncWrite + Unpin,
{
    let to_client = match end {
        End::ClientClosed | End::ClientTerminated => None,
        End::ClientProtocol(e) => {
            super::metrics::get().protocol_errors.increment(1);
            warn!(error = %e.message, sqlstate = e.sqlstate, "closing a client that broke the protocol");
            Some((e.sqlstate, e.message.clone()))
        }
        End::PrimaryClosed { reported: true } => None,
        End::PrimaryClosed { reported: false } => Some((
            sqlstate::CONNECTION_FAILURE,
            "the connection to the primary was lost".to_string(),
        )),
        End::PrimaryProtocol(e) => Some((
            sqlstate::CONNECTION_FAILURE,
            format!("the primary sent an invalid message: {}", e.message),
        )),
        End::Drained => Some((
            sqlstate::ADMIN_SHUTDOWN,
            "pgbridge is shutting down".to_string(),
        )),
    };
    if let Some((code, message)) = to_client {
        if shared.client_at_boundary() {
            let _ = write_fatal(client, code, &message).await;
        }
    }
    let _ = client.shutdown().await;
    // A query still running for a client that is gone is cancelled, so that its backend is
    // released now rather than when the query ends.
    if shared.busy() && !matches!(end, End::PrimaryClosed { .. }) {
        if let Some(target) = &keys.primary {
            debug!("cancelling the query of a session that ended");
            let _ = send_cancel(target, CANCEL_TIMEOUT).await;
        }
    }
    let _ = primary.shutdown().await;
}
