//! One client session, from its first byte to its last.
//!
//! 1. Negotiation ([`super::negotiate`]): TLS, cancel requests, the StartupMessage.
//! 2. Admission: the connection limit and the drain refuse with a SQLSTATE.
//! 3. The connection to the primary ([`super::primary`], TLS as its url says), with the
//!    client's own StartupMessage bytes: the primary authenticates the client itself, whatever
//!    the method, through the relay.
//! 4. The relay ([`super::relay`]) until one side stops, then an orderly end: the client gets an
//!    ErrorResponse with a SQLSTATE when pgbridge is the one ending the session, and a query the
//!    client abandoned is cancelled on the primary so that its backend is released.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, info_span, warn, Instrument};

use super::negotiate::{negotiate, write_fatal, Negotiated, CANCEL_TIMEOUT};
use super::primary::{self, Opened};
use super::relay::{self, ClientLimits, End, KeyExchange, Shared};
use super::stream::SplitStream;
use crate::capture;
use crate::config::MirrorMode;
use crate::instance::{Instance, Migration};
use crate::net::addr::ServerStream;
use crate::net::cancel::{send_cancel, Alongside, BackendTarget, Registration};
use crate::protocol::messages::{sqlstate, CancelKey};
use crate::protocol::startup::StartupPacket;
use crate::reads::secondary::{startup_settings, SessionServer};

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

/// The primary's cancel key of this session, and the key handed to the client for it.
struct Keys<'a> {
    instance: &'a Instance,
    registration: Option<Registration>,
    primary: Option<BackendTarget>,
    /// The session's connection to the secondary, when it has one.
    alongside: Alongside,
}

impl KeyExchange for Keys<'_> {
    fn exchange(&mut self, primary_key: CancelKey) -> Bytes {
        let url = &self.instance.config.primary.url;
        let target = BackendTarget {
            addr: url.server_addr().clone(),
            tls: url.tls().clone(),
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
    if let Err((code, message)) = admit(instance, permit.is_some()) {
        let _ = write_fatal(&mut client, code, &message).await;
        return;
    }
    let metrics = super::metrics::get();
    let Opened { stream, first } = match primary::open(instance, &raw).await {
        Ok(opened) => opened,
        Err(e) => {
            metrics.primary_connect_errors.increment(1);
            warn!(error = %e, "could not connect to the primary");
            let _ = write_fatal(&mut client, sqlstate::CONNECTION_FAILURE, &e.to_string()).await;
            return;
        }
    };
    let started = Instant::now();
    let _active = metrics.session_started();
    let relayed = Relayed {
        instance,
        first,
        params: &params,
        id: session_id,
    };
    let (end, keys) = match stream {
        ServerStream::Tcp(tcp) => relayed.run(client, tcp).await,
        ServerStream::Unix(unix) => relayed.run(client, unix).await,
        ServerStream::Tls(tls) => relayed.run(client, *tls).await,
    };
    info!(end = ?end, secs = started.elapsed().as_secs_f64(), "session ended");
    drop(keys);
    drop(permit);
}

/// Whether a client that has said who it is may have a session now: not past the connection
/// limit (`has_permit`), not while pgbridge drains.
fn admit(instance: &Instance, has_permit: bool) -> Result<(), (&'static str, String)> {
    if !has_permit {
        super::metrics::get().refused_limit.increment(1);
        let limit = instance.config.limits.max_client_connections;
        warn!(limit, "refused client: connection limit reached");
        let message =
            format!("too many connections to pgbridge (limits.max_client_connections = {limit})");
        return Err((sqlstate::TOO_MANY_CONNECTIONS, message));
    }
    if instance.is_draining() {
        let message = "pgbridge is shutting down".to_string();
        return Err((sqlstate::ADMIN_SHUTDOWN, message));
    }
    Ok(())
}

/// A session admitted and connected to the primary.
struct Relayed<'p> {
    instance: &'p Instance,
    /// What the primary sent already (read to decide on another TLS attempt).
    first: Bytes,
    params: &'p BTreeMap<String, String>,
    id: u64,
}

impl<'p> Relayed<'p> {
    /// Relays until one side stops, then ends the session as that side requires. Returns why it
    /// ended, and the session's cancel key registration (dropped by the caller).
    async fn run<C: SplitStream, P: SplitStream>(&self, client: C, primary: P) -> (End, Keys<'p>) {
        let shared = Shared::new();
        let mut keys = Keys {
            instance: self.instance,
            registration: None,
            primary: None,
            alongside: Alongside::default(),
        };
        let (mut client_r, mut client_w) = client.split_halves();
        let (primary_r, mut primary_w) = primary.split_halves();
        let mut primary_r = std::io::Cursor::new(self.first.clone()).chain(primary_r);
        let migration = self.instance.migration.as_ref();
        let state = migration.map(|m| capture_state(m, self.id));
        let parts = migration.zip(state.as_ref());
        let mut driver = parts.map(|(m, s)| self.driver(m, s, keys.alongside.clone()));
        let replies = parts.map(|(m, s)| replies(m, s, self.id));
        let metrics = super::metrics::get();
        let limits = ClientLimits {
            max_message_bytes: self.instance.config.limits.max_message_bytes,
        };
        let up = async {
            let (r, w, b) = (&mut client_r, &mut primary_w, &metrics.bytes_to_primary);
            match driver.as_mut() {
                Some(d) => relay::client_to_primary_capturing(r, w, &shared, &limits, b, d).await,
                None => relay::client_to_primary(r, w, &shared, &limits, b).await,
            }
        };
        let down = relay::primary_to_client(
            &mut primary_r,
            &mut client_w,
            &shared,
            &mut keys,
            &metrics.bytes_to_client,
            replies.as_ref(),
        );
        let end = until_end(self.instance, &shared, up, down).await;
        drop(driver);
        finish(&end, &shared, &keys, &mut client_w, &mut primary_w).await;
        (end, keys)
    }

    /// The capture's request side of this session, serving reads on the secondary when one is
    /// configured.
    fn driver<'a>(
        &self,
        m: &'a Migration,
        state: &'a capture::Shared,
        alongside: Alongside,
    ) -> capture::Driver<'a> {
        let mirror = m.mirror.as_ref();
        let driver = capture::Driver::new(
            state,
            &m.analyzer,
            mirror.map(|m| &m.journal),
            &m.recorder,
            self.id,
        )
        .with_routing(&m.reads, &m.shared)
        .with_writes(capture::WriteRouting {
            flags: m.writes.flags.clone(),
            rules: m.rules.clone(),
            secondary: m.serve.as_ref().map(|o| o.secondary.clone()),
            startup: crate::writes::remote::startup(self.params.iter()),
        });
        let Some(opts) = &m.serve else {
            return driver;
        };
        let server = SessionServer::new(
            opts.clone(),
            startup_settings(self.params.iter()),
            alongside,
        );
        driver.with_serving(server, mirror.map(|m| &m.applier), self.params)
    }
}

/// The capture state a session's two directions share.
fn capture_state(m: &Migration, session: u64) -> capture::Shared {
    let mirror = m.mirror.as_ref();
    capture::Shared::new(
        mirror.map(|m| m.journal.clone()),
        mirror.is_some_and(|m| m.mode == MirrorMode::Sync),
    )
    .with_shadow(m.shadow.clone(), session)
}

/// The capture's reply side of a session.
fn replies<'a>(m: &'a Migration, state: &'a capture::Shared, session: u64) -> capture::Replies<'a> {
    let mirror = m.mirror.as_ref();
    capture::Replies {
        shared: state,
        recorder: &m.recorder,
        applier: mirror.map(|m| &m.applier),
        sync_timeout: mirror.map_or(Duration::ZERO, |m| m.sync_timeout),
        session,
    }
}

/// Runs both directions until one ends; once pgbridge drains, the session ends at its next
/// idle point, or when `limits.shutdown_timeout_secs` runs out.
async fn until_end(
    instance: &Instance,
    shared: &Shared,
    up: impl std::future::Future<Output = End>,
    down: impl std::future::Future<Output = End>,
) -> End {
    tokio::pin!(up, down);
    let mut drain = instance.drain_signal();
    let mut deadline = None;
    loop {
        tokio::select! {
            end = &mut up => return end,
            end = &mut down => return end,
            _ = drain.wait_for(|d| *d), if deadline.is_none() => {
                shared.start_draining();
                deadline = Some(tokio::time::Instant::now() + instance.config.limits.shutdown_timeout_secs);
                if shared.is_idle() && shared.established() {
                    return End::Drained;
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => return End::Drained,
        }
    }
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
    if let Some((code, message)) = farewell(end) {
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

/// Why a client on TLS that supports channel binding cannot log in with SCRAM through pgbridge
/// to a primary on TLS, and what to do.
const CHANNEL_BINDING: &str = "SCRAM channel binding negotiation error: the client's TLS \
    session ends at pgbridge, so channel binding cannot reach the primary (pgbridge does not \
    offer SCRAM-SHA-256-PLUS); connect with channel_binding=disable";

/// What the client is told when pgbridge ends its session (nothing when the client ended it,
/// or the primary already said why).
fn farewell(end: &End) -> Option<(&'static str, String)> {
    match end {
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
        End::ChannelBinding => {
            warn!("refused a client that wants SCRAM channel binding through pgbridge");
            Some((sqlstate::PROTOCOL_VIOLATION, CHANNEL_BINDING.to_string()))
        }
    }
}
