//! Primary to client: the primary's bytes forwarded as they came, except BackendKeyData
//! (pgbridge's own key instead), an AuthenticationSASL offering SCRAM-SHA-256-PLUS (offered
//! without it) and, with rules, what the capture's tracker says to drop, replace or hold; the
//! secondary's answers to reads it served join the stream in their turn.

use std::sync::atomic::Ordering::Relaxed;

use bytes::{Buf, BytesMut};
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::debug;

use super::{write, End, KeyExchange, Shared, READ_CHUNK};
use crate::capture::expect::Action;
use crate::capture::{Replies, Served};
use crate::protocol::frame::{Disposition, Event, FrameScanner};
use crate::protocol::messages::{ready_status, sasl_offer_without_channel_binding, CancelKey};
use crate::protocol::ProtocolError;

/// Relays primary frames to the client until either side stops.
pub async fn primary_to_client<R, W, K>(
    primary: &mut R,
    client: &mut W,
    shared: &Shared,
    keys: &mut K,
    bytes: &Counter,
    capture: Option<&Replies<'_>>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    K: KeyExchange,
{
    let mut down = Down {
        client,
        shared,
        keys,
        bytes,
        capture,
        buf: BytesMut::with_capacity(READ_CHUNK),
        scanner: FrameScanner::new(),
        ready: 0,
        out: BytesMut::new(),
    };
    loop {
        if let Err(end) = down.relay_buffered().await {
            return end;
        }
        if down.flush().await.is_err() {
            return End::ClientClosed;
        }
        match down.read(primary).await {
            Ok(true) => {}
            Ok(false) => {
                return End::PrimaryClosed {
                    reported: down.scanner.last_tag() == b'E',
                }
            }
            Err(end) => return end,
        }
    }
}

/// The direction's state between reads.
struct Down<'a, W, K> {
    client: &'a mut W,
    shared: &'a Shared,
    keys: &'a mut K,
    bytes: &'a Counter,
    capture: Option<&'a Replies<'a>>,
    buf: BytesMut,
    scanner: FrameScanner,
    /// Bytes at the front of `buf` that are ready to be written as they are.
    ready: usize,
    /// The client's bytes of this read, when some frames were dropped or replaced (written
    /// once per read, before what is `ready`).
    out: BytesMut,
}

impl<W: AsyncWrite + Unpin, K: KeyExchange> Down<'_, W, K> {
    /// Handles every whole frame the buffer holds; `Err` when the session ends.
    async fn relay_buffered(&mut self) -> Result<(), End> {
        while let Some((start, end)) = self.next_frame().map_err(End::PrimaryProtocol)? {
            // With the frame's action, the replies the secondary gave that are due right after.
            // The capture never asked for an authentication request.
            let (action, served) = match self.capture {
                Some(c) if self.buf[start] != b'R' => c.on_frame(&self.buf[start..end]),
                _ => (Action::Forward, None),
            };
            let served = served.map(|s| self.answered(s));
            let action = self.inspect(start, end, action)?;
            self.apply(action, start, end, served.is_some()).await?;
            if let Some(served) = served {
                self.out.extend_from_slice(&served);
            }
            if self.at_drain_point() {
                // Draining: the session ends at this idle point, once the reply is written.
                self.out.extend_from_slice(&self.buf[..self.ready]);
                self.write_out(true).await?;
                return Err(End::Drained);
            }
        }
        Ok(())
    }

    /// The next frame that must be seen whole; the ones before it become `ready`.
    fn next_frame(&mut self) -> Result<Option<(usize, usize)>, ProtocolError> {
        let capture = self.capture;
        let starting = !self.shared.established();
        let classify = |tag: u8, _len: u32| {
            Ok(match tag {
                b'Z' | b'K' => Disposition::Inspect,
                b'R' if starting => Disposition::Inspect,
                _ if capture.is_some_and(|c| c.wants(tag)) => Disposition::Inspect,
                _ => Disposition::Pass,
            })
        };
        loop {
            match self.scanner.next(&self.buf, classify)? {
                Event::Forward { end } => self.ready = end,
                Event::Frame { start, end } => return Ok(Some((start, end))),
                Event::NeedMore { .. } => return Ok(None),
            }
        }
    }

    /// What the relay itself does with ReadyForQuery and BackendKeyData, after the capture.
    fn inspect(&mut self, start: usize, end: usize, action: Action) -> Result<Action, End> {
        let frame = &self.buf[start..end];
        Ok(match frame[0] {
            b'Z' if action != Action::Drop => {
                // The first ReadyForQuery ends the startup and answers no request.
                if self.shared.txn.swap(ready_status(frame), Relaxed) != 0 {
                    self.shared.in_flight.fetch_sub(1, Relaxed);
                }
                action
            }
            b'K' => {
                let Some(key) = CancelKey::from_backend_key_data(frame) else {
                    return Err(End::PrimaryProtocol(ProtocolError::violation(
                        "invalid BackendKeyData from the primary",
                    )));
                };
                Action::Replace(self.keys.exchange(key))
            }
            b'R' if action == Action::Forward => match sasl_offer_without_channel_binding(frame) {
                Some(offer) => {
                    debug!("SCRAM-SHA-256-PLUS taken out of the primary's offer");
                    self.shared.plus_dropped.store(true, Relaxed);
                    Action::Replace(offer)
                }
                None => action,
            },
            _ => action,
        })
    }

    /// Carries out a frame's action; `served`: the secondary's replies follow it.
    async fn apply(
        &mut self,
        action: Action,
        start: usize,
        end: usize,
        served: bool,
    ) -> Result<(), End> {
        match action {
            Action::Forward if !served => self.ready = end,
            Action::Forward => self.take_into_out(end),
            Action::ForwardWhenApplied(id) => {
                self.out.extend_from_slice(&self.buf[..start]);
                self.write_out(true).await?;
                if let Some(c) = self.capture {
                    c.wait_applied(id).await;
                }
                self.skip(start);
                self.ready = end - start;
                if served {
                    self.take_into_out(self.ready);
                }
            }
            Action::Drop | Action::Replace(_) => {
                self.out.extend_from_slice(&self.buf[..start]);
                if let Action::Replace(b) = &action {
                    self.out.extend_from_slice(b);
                }
                self.skip(end);
                self.ready = 0;
            }
        }
        Ok(())
    }

    /// Moves the first `n` bytes of the buffer into `out`.
    fn take_into_out(&mut self, n: usize) {
        self.out.extend_from_slice(&self.buf[..n]);
        self.skip(n);
        self.ready = 0;
    }

    /// Draining, idle, and the last frame read ends what was read.
    fn at_drain_point(&self) -> bool {
        self.shared.draining.load(Relaxed)
            && self.shared.is_idle()
            && self.ready > 0
            && self.ready == self.scanner.scanned()
    }

    /// Writes what is due after a read: `out`, then the bytes `ready` as they are.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.ready == 0 && self.out.is_empty() {
            return Ok(());
        }
        let at_boundary = self.scanner.at_boundary() && self.ready == self.scanner.scanned();
        if self.out.is_empty() {
            write_client(
                self.client,
                &self.buf[..self.ready],
                self.shared,
                at_boundary,
                self.bytes,
            )
            .await?;
        } else {
            self.out.extend_from_slice(&self.buf[..self.ready]);
            let done =
                write_client(self.client, &self.out, self.shared, at_boundary, self.bytes).await;
            self.out.clear();
            done?;
        }
        self.skip(self.ready);
        self.ready = 0;
        Ok(())
    }

    /// Writes `out` now and empties it.
    async fn write_out(&mut self, at_boundary: bool) -> Result<(), End> {
        let done = write_client(self.client, &self.out, self.shared, at_boundary, self.bytes).await;
        self.out.clear();
        done.map_err(|_| End::ClientClosed)
    }

    /// Reads more from the primary; between replies the secondary's answers are written as
    /// soon as they are due. `Ok(false)`: the primary closed the connection.
    async fn read<R: AsyncRead + Unpin>(&mut self, primary: &mut R) -> Result<bool, End> {
        self.buf.reserve(READ_CHUNK);
        let Some(c) = self.capture else {
            return Ok(matches!(primary.read_buf(&mut self.buf).await, Ok(n) if n > 0));
        };
        loop {
            tokio::select! {
                biased;
                _ = c.served_queued() => {
                    if let Some(served) = c.take_served() {
                        let served = self.answered(served);
                        write_client(self.client, &served, self.shared, true, self.bytes)
                            .await
                            .map_err(|_| End::ClientClosed)?;
                    }
                }
                r = primary.read_buf(&mut self.buf) => return Ok(matches!(r, Ok(n) if n > 0)),
            }
        }
    }

    /// The secondary's replies, their ReadyForQuery frames counted as requests answered.
    fn answered(&self, served: Served) -> BytesMut {
        self.shared.answered(served.readies);
        served.bytes
    }

    fn skip(&mut self, n: usize) {
        self.buf.advance(n);
        self.scanner.consume(n);
    }
}

/// Writes to the client, noting whether what it has ends at a frame boundary (where pgbridge
/// may write an ErrorResponse of its own).
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
