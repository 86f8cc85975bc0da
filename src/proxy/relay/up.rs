//! Client to primary: every frame header checked (type, size), requests counted, and the bytes
//! forwarded as they came (a SASLInitialResponse after a rewritten offer looked at first); with
//! rules, every request frame goes whole through the capture's [`Driver`], which decides what
//! the primary gets.

use std::sync::atomic::Ordering::Relaxed;

use bytes::{Buf, BytesMut};
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::{check_sasl_response, write, ClientLimits, End, Shared, READ_CHUNK};
use crate::capture::Driver;
use crate::protocol::frame::{printable, Disposition, Event, FrameScanner};
use crate::protocol::messages::sqlstate;
use crate::protocol::ProtocolError;

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
                classify(tag, len, limits, shared, &mut terminated)
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
                // Only a SASLInitialResponse after a rewritten offer is inspected.
                Ok(Event::Frame { start, end }) => {
                    if let Err(end) = check_sasl_response(shared, &buf[start..end]) {
                        return end;
                    }
                    if write(primary, &buf[..end], bytes).await.is_err() {
                        return End::PrimaryClosed { reported: false };
                    }
                    buf.advance(end);
                    scanner.consume(end);
                }
                Ok(Event::NeedMore { .. }) => break,
                Err(e) => return End::ClientProtocol(e),
            }
        }
        if !read(client, &mut buf).await {
            return End::ClientClosed;
        }
    }
}

/// Relays client frames to the primary through the capture's [`Driver`].
pub async fn client_to_primary_capturing<R, W>(
    client: &mut R,
    primary: &mut W,
    shared: &Shared,
    limits: &ClientLimits,
    bytes: &Counter,
    driver: &mut Driver<'_>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = FrameScanner::new();
    let mut terminated = false;
    loop {
        let classify = |tag, len| classify_capturing(tag, len, limits, shared, &mut terminated);
        if let Err(end) =
            drive_buffered(&mut buf, &mut scanner, primary, driver, shared, classify).await
        {
            return end;
        }
        match driver.flush(primary).await {
            Ok(n) => bytes.increment(n as u64),
            Err(_) => return End::PrimaryClosed { reported: false },
        }
        if terminated && scanner.at_boundary() {
            return End::ClientTerminated;
        }
        match read_or_continue(client, &mut buf, primary, driver, bytes).await {
            Ok(true) => {}
            Ok(false) => return End::ClientClosed,
            Err(end) => return end,
        }
    }
}

/// Hands every frame in `buf` to the driver: whole request frames to decide on, the rest (COPY
/// data, authentication, Terminate) to pass in order.
async fn drive_buffered<W, F>(
    buf: &mut BytesMut,
    scanner: &mut FrameScanner,
    primary: &mut W,
    driver: &mut Driver<'_>,
    shared: &Shared,
    mut classify: F,
) -> Result<(), End>
where
    W: AsyncWrite + Unpin,
    F: FnMut(u8, u32) -> Result<Disposition, ProtocolError>,
{
    loop {
        match scanner.next(buf, &mut classify) {
            Ok(Event::Forward { end }) => {
                driver.pass(&buf[..end]);
                buf.advance(end);
                scanner.consume(end);
            }
            Ok(Event::Frame { start, end }) if !shared.established() => {
                // Before the session is established, only a SASLInitialResponse after a
                // rewritten offer is inspected.
                check_sasl_response(shared, &buf[start..end])?;
                driver.pass(&buf[start..end]);
                buf.advance(end);
                scanner.consume(end);
            }
            Ok(Event::Frame { start, end }) => {
                if driver.handle(&buf[start..end], primary).await.is_err() {
                    return Err(End::PrimaryClosed { reported: false });
                }
                buf.advance(end);
                scanner.consume(end);
            }
            Ok(Event::NeedMore { .. }) => return Ok(()),
            Err(e) => return Err(End::ClientProtocol(e)),
        }
    }
}

/// Reads more from the client; meanwhile a COPY outside a transaction finishes (journal,
/// COMMIT) when its reply arrives, while the client, done streaming, waits for it. `Ok(false)`:
/// the client is gone.
async fn read_or_continue<R, W>(
    client: &mut R,
    buf: &mut BytesMut,
    primary: &mut W,
    driver: &mut Driver<'_>,
    bytes: &Counter,
) -> Result<bool, End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if !driver.continuation_pending() {
            return Ok(read(client, buf).await);
        }
        buf.reserve(READ_CHUNK);
        tokio::select! {
            r = client.read_buf(buf) => return Ok(matches!(r, Ok(n) if n > 0)),
            _ = driver.continuation_ready() => {
                let continued = async {
                    driver.continue_pending().await?;
                    driver.flush(primary).await
                };
                match continued.await {
                    Ok(n) => bytes.increment(n as u64),
                    Err(_) => return Err(End::PrimaryClosed { reported: false }),
                }
            }
        }
    }
}

/// Reads what the client sent; false when it closed the connection or it failed.
async fn read<R: AsyncRead + Unpin>(client: &mut R, buf: &mut BytesMut) -> bool {
    buf.reserve(READ_CHUNK);
    matches!(client.read_buf(buf).await, Ok(n) if n > 0)
}

/// With rules every request frame is seen whole, once the session is established (before, only
/// authentication passes); COPY data, CopyDone, CopyFail and Terminate pass in order.
fn classify_capturing(
    tag: u8,
    len: u32,
    limits: &ClientLimits,
    shared: &Shared,
    terminated: &mut bool,
) -> Result<Disposition, ProtocolError> {
    let d = classify(tag, len, limits, shared, terminated)?;
    let inspect = shared.established() && !matches!(tag, b'd' | b'c' | b'f' | b'X');
    Ok(if inspect { Disposition::Inspect } else { d })
}

/// Checks one client frame header: its type and size; counts the requests that end in a
/// ReadyForQuery and notes Terminate.
fn classify(
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
    if tag == b'p' && shared.plus_dropped.load(Relaxed) {
        return Ok(Disposition::Inspect);
    }
    Ok(Disposition::Pass)
}
