//! The two directions of one session: client to primary and primary to client.
//!
//! Each direction reads whatever the socket has, walks the frame headers in it with a
//! [`FrameScanner`], and writes the original bytes on in as few writes as possible: usually one
//! write per read. Frames stream through even when larger than the buffer (a 100 MB bytea is
//! never held whole). Only a handful of frames are looked at:
//!
//! - client to primary: every header, to refuse garbage and oversized messages and to count the
//!   requests that each end in one ReadyForQuery (Query, Sync, FunctionCall);
//! - primary to client: ReadyForQuery (transaction state, requests in flight), BackendKeyData
//!   (replaced by pgbridge's own cancel key).
//!
//! The two directions run as two futures in the session's one task and share a [`Shared`] of
//! atomics. Neither blocks the other: a client that pipelines while the primary streams results
//! behaves as it would directly.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering::Relaxed};

use bytes::{Buf, BytesMut};
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::frame::{printable, Disposition, Event, FrameScanner};
use crate::protocol::messages::{ready_status, sqlstate, CancelKey};
use std::time::Duration;

use crate::capture::{self, track::Action};
use crate::divergence::{Divergence, Kind as DivergenceKind, Recorder};
use crate::mirror::ApplierHandle;
use crate::protocol::ProtocolError;

/// Bytes read at once. Large enough that a typical result set arrives in one read.
const READ_CHUNK: usize = 32 * 1024;

/// State the two directions of a session share.
#[derive(Debug, Default)]
pub struct Shared {
    /// Requests sent (Query, Sync, FunctionCall) whose ReadyForQuery has not come back.
    in_flight: AtomicI64,
    /// Extended-protocol messages sent since the last Sync.
    partial: AtomicBool,
    /// The transaction status of the last ReadyForQuery (`I`, `T` or `E`); 0 before the first.
    txn: AtomicU8,
    /// Set when pgbridge is draining: the session ends at its next idle point.
    draining: AtomicBool,
    /// Whether the bytes written to the client so far end at a frame boundary.
    client_at_boundary: AtomicBool,
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            client_at_boundary: AtomicBool::new(true),
            ..Default::default()
        }
    }

    /// Between transactions with nothing sent and nothing owed: the session can be closed without
    /// losing anything the client asked for.
    pub fn is_idle(&self) -> bool {
        self.txn.load(Relaxed) == b'I'
            && self.in_flight.load(Relaxed) <= 0
            && !self.partial.load(Relaxed)
    }

    /// A request is running on the primary (for cancelling it when the client vanishes).
    pub fn busy(&self) -> bool {
        self.in_flight.load(Relaxed) > 0
    }

    /// The session has completed its startup (authentication included).
    pub fn established(&self) -> bool {
        self.txn.load(Relaxed) != 0
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// pgbridge may write a message of its own to the client now.
    pub fn client_at_boundary(&self) -> bool {
        self.client_at_boundary.load(Relaxed)
    }
}

/// Why a direction stopped.
#[derive(Debug)]
pub enum End {
    /// The client closed its connection (or it failed).
    ClientClosed,
    /// The client sent Terminate; it was forwarded.
    ClientTerminated,
    /// The client sent something that is not the protocol, or too large.
    ClientProtocol(ProtocolError),
    /// The primary closed the connection; `reported` if its last message was an ErrorResponse,
    /// which the client then already has.
    PrimaryClosed { reported: bool },
    /// The primary sent something pgbridge cannot relay.
    PrimaryProtocol(ProtocolError),
    /// The session reached an idle point while pgbridge drains.
    Drained,
}

/// What the client-to-primary direction needs to know.
pub struct ClientLimits {
    pub max_message_bytes: u32,
}

/// Relays client frames to the primary until either side stops.
pub async fn client_to_primary<R, W>(
    client: &mut R,
    primary: &mut W,
    shared: &Shared,
    limits: &ClientLimits,
    bytes: &Counter,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = FrameScanner::new();
    let mut terminated = false;
    loop {
        loop {
            let event = scanner.next(&buf, |tag, len| {
                classify_client(tag, len, limits, shared, &mut terminated)
            });
            match event {
                Ok(Event::Forward { end }) => {
                    if write(primary, &buf[..end], bytes).await.is_err() {
                        return End::PrimaryClosed { reported: false };
                    }
                    buf.advance(end);
                    scanner.consume(end);
                    if terminated && scanner.at_boundary() {
                        return End::ClientTerminated;
                    }
                }
                Ok(Event::Frame { .. }) => unreachable!("no client frame is inspected"),
                Ok(Event::NeedMore { .. }) => break,
                Err(e) => return End::ClientProtocol(e),
            }
        }
        buf.reserve(READ_CHUNK);
        match client.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return End::ClientClosed,
            Ok(_) => {}
        }
    }
}

/// Relays client frames to the primary through the capture's [`capture::Driver`].
pub async fn client_to_primary_capturing<R, W>(
    client: &mut R,
    primary: &mut W,
    shared: &Shared,
    limits: &ClientLimits,
    bytes: &Counter,
    driver: &mut capture::Driver<'_>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = FrameScanner::new();
    let mut terminated = false;
    loop {
        loop {
            let established = shared.established();
            let event = scanner.next(&buf, |tag, len| {
                let d = classify_client(tag, len, limits, shared, &mut terminated)?;
                // Before the session is established, only authentication passes.
                let inspect = established && !matches!(tag, b'd' | b'c' | b'f' | b'X');
                Ok(if inspect { Disposition::Inspect } else { d })
            });
            match event {
                Ok(Event::Forward { end }) => {
                    driver.pass(&buf[..end]);
                    buf.advance(end);
                    scanner.consume(end);
                }
                Ok(Event::Frame { start, end }) => {
                    if driver.handle(&buf[start..end], primary).await.is_err() {
                        return End::PrimaryClosed { reported: false };
                    }
                    buf.advance(end);
                    scanner.consume(end);
                }
                Ok(Event::NeedMore { .. }) => break,
                Err(e) => return End::ClientProtocol(e),
            }
        }
        match driver.flush(primary).await {
            Ok(n) => bytes.increment(n as u64),
            Err(_) => return End::PrimaryClosed { reported: false },
        }
        if terminated && scanner.at_boundary() {
            return End::ClientTerminated;
        }
        buf.reserve(READ_CHUNK);
        // A COPY outside a transaction finishes (journal, COMMIT) when its reply arrives, while
        // the client, done streaming, waits for it.
        let read = if driver.continuation_pending() {
            tokio::select! {
                r = client.read_buf(&mut buf) => r,
                _ = driver.continuation_ready() => {
                    let continued = async {
                        driver.continue_pending().await?;
                        driver.flush(primary).await
                    };
                    match continued.await {
                        Ok(n) => bytes.increment(n as u64),
                        Err(_) => return End::PrimaryClosed { reported: false },
                    }
                    continue;
                }
            }
        } else {
            client.read_buf(&mut buf).await
        };
        match read {
            Ok(0) | Err(_) => return End::ClientClosed,
            Ok(_) => {}
        }
    }
}

fn classify_client(
    tag: u8,
    len: u32,
    limits: &ClientLimits,
    shared: &Shared,
    terminated: &mut bool,
) -> Result<Disposition, ProtocolError> {
    match tag {
        b'Q' | b'F' => {
            shared.in_flight.fetch_add(1, Relaxed);
        }
        b'S' => {
            shared.in_flight.fetch_add(1, Relaxed);
            shared.partial.store(false, Relaxed);
        }
        b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => shared.partial.store(true, Relaxed),
        b'd' | b'c' | b'f' | b'p' => {}
        b'X' => *terminated = true,
        _ => {
            return Err(ProtocolError::violation(format!(
                "invalid frontend message type {}",
                printable(tag)
            )));
        }
    }
    if len > limits.max_message_bytes {
        return Err(ProtocolError {
            sqlstate: sqlstate::PROGRAM_LIMIT_EXCEEDED,
            message: format!(
                "message of {len} bytes exceeds pgbridge's limit of {} bytes (limits.max_message_bytes)",
                limits.max_message_bytes
            ),
        });
    }
    Ok(Disposition::Pass)
}

/// Replaces the primary's BackendKeyData with the key pgbridge hands the client.
pub trait KeyExchange {
    /// Returns the BackendKeyData frame to send the client instead of the primary's.
    fn exchange(&mut self, primary_key: CancelKey) -> bytes::Bytes;
}

/// The capture of a session with rules, as the reply direction needs it.
pub struct CaptureCtx<'a> {
    pub shared: &'a capture::Shared,
    pub recorder: &'a Recorder,
    pub applier: Option<&'a ApplierHandle>,
    pub sync_timeout: Duration,
    pub session: u64,
}

/// Relays primary frames to the client until either side stops.
pub async fn primary_to_client<R, W, K>(
    primary: &mut R,
    client: &mut W,
    shared: &Shared,
    keys: &mut K,
    bytes: &Counter,
    capture: Option<&CaptureCtx<'_>>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    K: KeyExchange,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = FrameScanner::new();
    // Bytes at the front of `buf` that are ready to be written as they are.
    let mut ready = 0;
    // The client's bytes of this read, when some frames were dropped or replaced.
    let mut out = BytesMut::new();
    loop {
        loop {
            let classify = |tag: u8, _len: u32| {
                Ok(match tag {
                    b'Z' | b'K' => Disposition::Inspect,
                    _ if capture.is_some_and(|c| c.shared.lock().wants(tag)) => {
                        Disposition::Inspect
                    }
                    _ => Disposition::Pass,
                })
            };
            let (start, end) = match scanner.next(&buf, classify) {
                Ok(Event::Forward { end }) => {
                    ready = end;
                    continue;
                }
                Ok(Event::Frame { start, end }) => (start, end),
                Ok(Event::NeedMore { .. }) => break,
                Err(e) => return End::PrimaryProtocol(e),
            };
            // With the frame's action, the replies the secondary gave that are due right after it.
            let (action, served) = match capture {
                Some(c) => c.on_frame(&buf[start..end], shared),
                None => (Action::Forward, None),
            };
            let action = match buf[start] {
                b'Z' if action != Action::Drop => {
                    // The first ReadyForQuery ends the startup and answers no request.
                    if shared.txn.swap(ready_status(&buf[start..end]), Relaxed) != 0 {
                        shared.in_flight.fetch_sub(1, Relaxed);
                    }
                    action
                }
                b'K' => {
                    let Some(key) = CancelKey::from_backend_key_data(&buf[start..end]) else {
                        return End::PrimaryProtocol(ProtocolError::violation(
                            "invalid BackendKeyData from the primary",
                        ));
                    };
                    Action::Replace(keys.exchange(key))
                }
                _ => action,
            };
            match action {
                Action::Forward if served.is_none() => ready = end,
                Action::Forward => {
                    out.extend_from_slice(&buf[..end]);
                    skip(&mut buf, &mut scanner, end);
                    ready = 0;
                }
                Action::ForwardWhenApplied(id) => {
                    out.extend_from_slice(&buf[..start]);
                    if write_client(client, &out, shared, true, bytes)
                        .await
                        .is_err()
                    {
                        return End::ClientClosed;
                    }
                    out.clear();
                    if let Some(c) = capture {
                        c.wait_applied(id).await;
                    }
                    skip(&mut buf, &mut scanner, start);
                    ready = end - start;
                    if served.is_some() {
                        out.extend_from_slice(&buf[..ready]);
                        skip(&mut buf, &mut scanner, ready);
                        ready = 0;
                    }
                }
                Action::Drop | Action::Replace(_) => {
                    // What the client gets is assembled in `out` and written once per read.
                    out.extend_from_slice(&buf[..start]);
                    if let Action::Replace(b) = &action {
                        out.extend_from_slice(b);
                    }
                    skip(&mut buf, &mut scanner, end);
                    ready = 0;
                }
            }
            if let Some(served) = served {
                out.extend_from_slice(&served);
            }
            // Draining: the session ends at this idle point, once the reply is written.
            if shared.draining.load(Relaxed)
                && shared.is_idle()
                && ready > 0
                && ready == scanner.scanned()
            {
                out.extend_from_slice(&buf[..ready]);
                if write_client(client, &out, shared, true, bytes)
                    .await
                    .is_err()
                {
                    return End::ClientClosed;
                }
                return End::Drained;
            }
        }
        if ready > 0 || !out.is_empty() {
            let at_boundary = scanner.at_boundary() && ready == scanner.scanned();
            let done = if out.is_empty() {
                write_client(client, &buf[..ready], shared, at_boundary, bytes).await
            } else {
                out.extend_from_slice(&buf[..ready]);
                let done = write_client(client, &out, shared, at_boundary, bytes).await;
                out.clear();
                done
            };
            if done.is_err() {
                return End::ClientClosed;
            }
            skip(&mut buf, &mut scanner, ready);
            ready = 0;
        }
        buf.reserve(READ_CHUNK);
        let read = match capture {
            // Between replies, the secondary's answers are written as soon as they are due.
            Some(c) => tokio::select! {
                biased;
                _ = c.shared.served.notified() => {
                    if let Some(served) = c.take_served(shared) {
                        if write_client(client, &served, shared, true, bytes).await.is_err() {
                            return End::ClientClosed;
                        }
                    }
                    continue;
                }
                r = primary.read_buf(&mut buf) => r,
            },
            None => primary.read_buf(&mut buf).await,
        };
        match read {
            Ok(0) | Err(_) => {
                return End::PrimaryClosed {
                    reported: scanner.last_tag() == b'E',
                };
            }
            Ok(_) => {}
        }
    }
}

fn skip(buf: &mut BytesMut, scanner: &mut FrameScanner, n: usize) {
    buf.advance(n);
    scanner.consume(n);
}

/// Counts the ReadyForQuery among the secondary's replies as requests answered.
fn answered(shared: &Shared, (served, readies): (BytesMut, usize)) -> BytesMut {
    shared.in_flight.fetch_sub(readies as i64, Relaxed);
    served
}

impl CaptureCtx<'_> {
    /// The frame's action, and the secondary's replies due right after it.
    fn on_frame(&self, frame: &[u8], shared: &Shared) -> (Action, Option<BytesMut>) {
        let (action, lost, records, served) = {
            let mut t = self.shared.lock();
            let action = t.on_frame(frame);
            (
                action,
                std::mem::take(&mut t.lost),
                std::mem::take(&mut t.records),
                t.take_served(),
            )
        };
        let served = served.map(|s| answered(shared, s));
        for d in records {
            self.recorder.record(d);
        }
        self.shared.progress.notify_one();
        if lost > 0 {
            let mut d = Divergence::new(DivergenceKind::UnmirroredWrite, "");
            d.detail = serde_json::json!({
                "reason": "the transaction ended without a COMMIT pgbridge could journal",
                "changes": lost,
            });
            d.session = Some(self.session);
            self.recorder.record(d);
        }
        (action, served)
    }

    /// The secondary's replies now due, counted as answered requests.
    fn take_served(&self, shared: &Shared) -> Option<BytesMut> {
        let served = self.shared.lock().take_served()?;
        self.shared.progress.notify_one();
        Some(answered(shared, served))
    }

    /// Sync mode: the client's COMMIT reply waits until the secondary applied it, or the timeout.
    async fn wait_applied(&self, id: u64) {
        let Some(applier) = self.applier else { return };
        if let Err(e) = applier.wait_applied(id, self.sync_timeout).await {
            let mut d = Divergence::new(DivergenceKind::SyncTimeout, "");
            d.secondary = e.to_string();
            d.detail = serde_json::json!({ "journal_id": id });
            d.session = Some(self.session);
            self.recorder.record(d);
        }
    }
}

async fn write_client<W: AsyncWrite + Unpin>(
    client: &mut W,
    data: &[u8],
    shared: &Shared,
    ends_at_boundary: bool,
    bytes: &Counter,
) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    shared.client_at_boundary.store(false, Relaxed);
    write(client, data, bytes).await?;
    shared.client_at_boundary.store(ends_at_boundary, Relaxed);
    Ok(())
}

async fn write<W: AsyncWrite + Unpin>(
    to: &mut W,
    data: &[u8],
    bytes: &Counter,
) -> std::io::Result<()> {
    to.write_all(data).await?;
    // A no-op on TCP; TLS streams need it to send what they buffered.
    to.flush().await?;
    bytes.increment(data.len() as u64);
    Ok(())
}
