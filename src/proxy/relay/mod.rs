//! The two directions of one session: client to primary ([`up`]) and primary to client
//! ([`down`]).
//!
//! Each direction reads whatever the socket has, walks the frame headers in it with a
//! [`FrameScanner`](crate::protocol::frame::FrameScanner), and writes the original bytes on in
//! as few writes as possible: usually one write per read. Frames stream through even when
//! larger than the buffer (a 100 MB bytea is never held whole). Only a handful of frames are
//! looked at:
//!
//! - client to primary: every header, to refuse garbage and oversized messages and to count the
//!   requests that each end in one ReadyForQuery (Query, Sync, FunctionCall); the
//!   SASLInitialResponse that answers an offer pgbridge rewrote;
//! - primary to client: ReadyForQuery (transaction state, requests in flight), BackendKeyData
//!   (replaced by pgbridge's own cancel key), the authentication requests before the session is
//!   established (an offer of SCRAM-SHA-256-PLUS loses it: see [`check_sasl_response`]).
//!
//! With rules, the capture sees more of both directions (every request frame whole, the reply
//! frames its tracker wants). The two directions run as two futures in the session's one task
//! and share a [`Shared`] of atomics. Neither blocks the other: a client that pipelines while
//! the primary streams results behaves as it would directly.

mod down;
mod up;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering::Relaxed};

use metrics::Counter;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::protocol::messages::{sasl_channel_binding_flag, CancelKey};
use crate::protocol::ProtocolError;

pub use down::primary_to_client;
pub use up::{client_to_primary, client_to_primary_capturing};

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
    /// The primary offered channel binding and the client was not told: its SASLInitialResponse
    /// is looked at.
    plus_dropped: AtomicBool,
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

    /// `n` requests were answered by replies pgbridge wrote itself (the secondary's).
    fn answered(&self, n: usize) {
        self.in_flight.fetch_sub(n as i64, Relaxed);
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
    /// The client wants SCRAM channel binding, which cannot pass through pgbridge.
    ChannelBinding,
    /// The session reached an idle point while pgbridge drains.
    Drained,
}

/// What the client-to-primary direction needs to know.
pub struct ClientLimits {
    pub max_message_bytes: u32,
}

/// Replaces the primary's BackendKeyData with the key pgbridge hands the client.
pub trait KeyExchange {
    /// Returns the BackendKeyData frame to send the client instead of the primary's.
    fn exchange(&mut self, primary_key: CancelKey) -> bytes::Bytes;
}

/// The client's answer to an offer without SCRAM-SHA-256-PLUS (the primary's TLS session is
/// pgbridge's, so a client could never complete channel binding with it). A client on TLS to
/// pgbridge that supports channel binding says `y` (it does, and thinks the server does not):
/// the primary, over TLS, would refuse that as a downgrade, so pgbridge refuses it first, saying
/// why. `n` (no TLS to pgbridge, or `channel_binding=disable`) goes on.
fn check_sasl_response(shared: &Shared, frame: &[u8]) -> Result<(), End> {
    if !shared.plus_dropped.swap(false, Relaxed) {
        return Ok(());
    }
    match sasl_channel_binding_flag(frame) {
        Some(b'y') => Err(End::ChannelBinding),
        _ => Ok(()),
    }
}

/// Writes `data` whole and counts it.
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
