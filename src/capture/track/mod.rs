//! The primary's replies, matched to the requests that asked for them.
//!
//! The client-to-primary direction pushes an [`Expect`] for every request it sends; this side
//! pops them as replies complete. Every reply of a client request reaches the client unchanged,
//! except the rows of a captured write (their trailing capture columns stripped, or all of them
//! dropped when the client wrote no RETURNING), and the replies to requests pgbridge injected
//! (BEGIN, `pg_current_xact_id()`, COMMIT), which the client never sees.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

mod ends;
mod results;

use super::expect::{Action, Described, Expect, Step};
use super::settings::SessionSets;
use super::txn::TxnBuffer;
use crate::divergence::compare::ResultSet;
use crate::mirror::{Change, Journal};
use crate::protocol::wire::{self, FieldInfo};
use crate::reads::shadow::Shadow;

/// Reported settings a shadow read pins on the secondary, so both sides format values alike.
const SHADOW_SETTINGS: [&str; 3] = ["DateStyle", "IntervalStyle", "TimeZone"];

/// The session's capture state, shared by its two directions.
#[derive(Default)]
pub struct Tracker {
    queue: VecDeque<Expect>,
    /// Types and formats of the current result's columns.
    fields: Vec<FieldInfo>,
    /// Changes of the statement in progress.
    pending: Vec<Change>,
    pub txn: TxnBuffer,
    /// The value of the last `pg_current_xact_id()`.
    pub xid: Option<i64>,
    /// The largest `pg_current_wal_insert_lsn()` a captured row of the transaction carried.
    pub lsn: Option<u64>,
    /// The status of a held ReadyForQuery, for the side that asked to hold it.
    pub held: Option<u8>,
    /// The transaction status of the last ReadyForQuery.
    pub status: u8,
    /// An ErrorResponse arrived since the last Sync.
    pub batch_error: bool,
    /// An extended-protocol request failed and its batch's Sync is not sent yet: the server
    /// skips what is sent until then.
    skipping: bool,
    /// The server's reported settings (ParameterStatus).
    pub settings: BTreeMap<String, String>,
    /// The session's own `SET`s, following its transactions.
    pub sets: SessionSets,
    /// The client's CommandComplete held until pgbridge's next step succeeded ([`Step::HoldComplete`]).
    held_complete: Option<Bytes>,
    /// A COPY's INSERT ... SELECT failed: its error, kept from the client.
    pub copy_error: Option<Bytes>,
    /// Messages for the client, written before the next ReadyForQuery it gets.
    pub before_ready: Vec<Bytes>,
    /// The journal intent whose COMMIT completed last, for sync mode.
    committed: Option<u64>,
    /// Changes lost because the transaction ended without pgbridge's COMMIT (for a divergence).
    pub lost: usize,
    /// Tables written by statements the mirror cannot capture, with why: marked as needing a
    /// repair once the session's transaction has ended (src/mirror/stale.rs).
    pub stale: Vec<(String, String)>,
    pub journal: Option<Arc<Journal>>,
    pub sync: bool,
    /// Divergences for the reply side to record.
    pub records: Vec<crate::divergence::Divergence>,
    /// The shadow executor, and the answer of the shadowed read in progress.
    pub shadow: Option<Arc<Shadow>>,
    shadow_result: Option<ResultSet>,
    /// The size of the rows kept in `shadow_result`.
    shadow_bytes: usize,
    pub session: u64,
    /// The open transaction may have written something (reads in it stay on the primary).
    pub touched: bool,
    /// The migrated tables the open transaction wrote, counted for the write switch
    /// (src/writes/mod.rs) until the session is idle again.
    pub active: crate::writes::Active,
    /// How many expectations were queued: a write counted in at a value not passed yet has
    /// its request still to be queued, and a ReadyForQuery of an earlier request does not end
    /// it ([`crate::writes::Active`]).
    pub pushed: u64,
    /// The open transaction wrote a table no rule migrates (src/writes/mixed.rs).
    pub other_write: bool,
    /// The journal id of the session's last committed mirrored transaction (read-your-writes).
    pub last_commit: Option<u64>,
    /// The primary's descriptions of the client's prepared statements.
    pub described: std::collections::HashMap<String, Described>,
    /// The same, by statement text and declared parameter types (trusted as long as a simple
    /// read's shape: a statement parsed again is described again once this one is stale).
    pub described_texts: std::collections::HashMap<String, Kept<Described>>,
    /// The primary's row descriptions of simple-protocol reads, by query shape.
    pub shapes: std::collections::HashMap<String, Kept<Option<Bytes>>>,
    /// The open transaction's isolation level, when a statement of it named one.
    pub txn_isolation: Option<crate::sql::isolation::Isolation>,
    /// The schema epoch the kept descriptions were given under.
    described_under: u64,
    /// The columns of a read the secondary answered, checked against the primary's fresh
    /// description of its text.
    pub shape_checked: Option<ShapeCheck>,
    /// pgbridge's injected statements prepared on the primary (their Parse succeeded).
    pub injected: Vec<&'static str>,
    /// Counts the client's DISCARDs and DEALLOCATEs: a Parse sent before one of them prepared
    /// nothing that lasts.
    pub injected_epoch: u64,
}

/// How long a row description the primary gave is trusted before it is asked again: a table
/// changed where pgbridge does not see it (DDL on the primary's own connections) is noticed
/// by then.
pub const DESCRIPTION_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// How the primary's description of a read the secondary answered came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeCheck {
    /// The same columns: the client got the secondary's rows.
    Same,
    /// Other columns: the ReadyForQuery is held, the primary is to run the read.
    Differs,
    /// The primary refused the text: the client got its error, as it would directly.
    Refused,
}

/// Something the primary said, kept with when and under which schema epoch.
#[derive(Debug, Clone)]
pub struct Kept<T> {
    pub value: T,
    at: std::time::Instant,
    epoch: u64,
}

impl<T: Clone> Kept<T> {
    pub fn new(value: T) -> Kept<T> {
        Kept {
            value,
            at: std::time::Instant::now(),
            epoch: super::schema_epoch(),
        }
    }

    /// The value, unless it is older than [`DESCRIPTION_TTL`] or a schema change came since.
    pub fn fresh(&self) -> Option<T> {
        let fresh = self.epoch == super::schema_epoch() && self.at.elapsed() < DESCRIPTION_TTL;
        fresh.then(|| self.value.clone())
    }
}

/// Query shapes whose row descriptions a session keeps.
const SHAPES_KEPT: usize = 1024;

impl Tracker {
    pub fn new(journal: Option<Arc<Journal>>, sync: bool) -> Tracker {
        Tracker {
            journal,
            sync,
            status: b'I',
            described_under: super::schema_epoch(),
            ..Default::default()
        }
    }

    pub fn expect(&mut self, e: Expect) {
        match e {
            Expect::Sync { .. } => self.skipping = false,
            // The server skips every message up to Sync after an error: no reply will come.
            Expect::Served { .. } => {}
            _ if self.skipping => return,
            _ => {}
        }
        self.queue.push_back(e);
        self.pushed += 1;
    }

    /// No reply is owed.
    pub fn drained(&self) -> bool {
        self.queue.is_empty()
    }

    /// The replies owed (if any) cannot change the transaction status or bring changes: they
    /// are Parse, Bind, Describe and Close replies only.
    pub fn settled(&self) -> bool {
        self.queue.iter().all(|e| {
            matches!(
                e,
                Expect::Parse { .. }
                    | Expect::InjectedParse { .. }
                    | Expect::Bind { .. }
                    | Expect::Describe { .. }
                    | Expect::Close { .. }
            )
        })
    }

    /// The client's DISCARD or DEALLOCATE was sent: pgbridge's statements are parsed again.
    pub fn forget_injected(&mut self) {
        self.injected.clear();
        self.injected_epoch += 1;
    }

    /// The step the next result rows belong to.
    fn step(&self) -> Option<&Step> {
        match self.queue.front()? {
            Expect::Query { steps, .. } => Some(steps.front().unwrap_or(&Step::Pass)),
            Expect::Describe { step, .. } | Expect::Execute { step, .. } => Some(step),
            _ => None,
        }
    }

    /// Whether a reply frame of type `tag` must be looked at (decided before its body arrives).
    pub fn wants(&self, tag: u8) -> bool {
        match tag {
            b'D' => !matches!(
                self.step(),
                None | Some(Step::Pass | Step::Tx(_) | Step::Fallback(_))
            ),
            b'T' | b'C' | b'I' | b'E' | b'Z' | b'1' | b'2' | b'3' | b't' | b'n' | b's' | b'S' => {
                true
            }
            // The CopyInResponse of the COPY pgbridge runs again, or of the client's COPY in
            // the extended protocol with Syncs sent before its data.
            b'G' => {
                matches!(self.step(), Some(Step::Replay))
                    || self
                        .queue
                        .iter()
                        .any(|e| matches!(e, Expect::Sync { in_copy: true, .. }))
            }
            _ => false,
        }
    }

    /// Handles one whole reply frame.
    pub fn on_frame(&mut self, frame: &[u8]) -> Action {
        if let Some(action) = self.on_describe_frame(frame) {
            return action;
        }
        match frame[0] {
            b'S' => {
                if let Some((name, at)) = wire::cstr(frame, 5) {
                    if let Some((value, _)) = wire::cstr(frame, at) {
                        self.settings.insert(name.to_string(), value.to_string());
                    }
                }
                Action::Forward
            }
            b'T' => self.on_row_description(frame),
            b'D' => self.on_data_row(frame),
            b'C' => self.on_complete(frame),
            b'I' | b's' => self.on_complete(frame),
            b'E' => self.on_error(frame),
            b'Z' => self.on_ready(frame),
            b'1' | b'2' | b'3' | b't' | b'n' => self.on_simple_reply(frame[0]),
            b'G' if matches!(self.step(), Some(Step::Replay)) => Action::Drop,
            b'G' => {
                // The server is in COPY now: the Syncs the client sent before its data are
                // ignored, and no ReadyForQuery will answer them.
                self.queue
                    .retain(|e| !matches!(e, Expect::Sync { in_copy: true, .. }));
                Action::Forward
            }
            _ => Action::Forward,
        }
    }

    /// Forgets the primary's row descriptions kept, when DDL on a migrated table went through
    /// pgbridge since they were given. (The secondary's columns are compared with them at
    /// every read, so a rule reloaded needs nothing here.)
    pub fn refresh_descriptions(&mut self) {
        let now = super::schema_epoch();
        if self.described_under != now {
            self.described.clear();
            self.described_texts.clear();
            self.shapes.clear();
            self.described_under = now;
        }
    }

    /// The primary's row description of a simple-protocol read of `shape`, when one is kept
    /// and fresh (`Some(None)`: the read returns no rows).
    pub fn fresh_shape(&self, shape: &str) -> Option<Option<Bytes>> {
        self.shapes.get(shape)?.fresh()
    }

    /// The secondary's replies now due, with a ReadyForQuery where pgbridge answered a Sync;
    /// and how many ReadyForQuery they hold.
    pub fn take_served(&mut self) -> Option<(BytesMut, usize)> {
        let mut out: Option<BytesMut> = None;
        let mut readies = 0;
        while let Some(Expect::Served { .. }) = self.queue.front() {
            let Some(Expect::Served { bytes, ready }) = self.queue.pop_front() else {
                unreachable!()
            };
            let buf = out.get_or_insert_with(BytesMut::new);
            buf.extend_from_slice(&bytes);
            if ready {
                buf.extend_from_slice(&wire::ready(self.status));
                readies += 1;
            }
        }
        out.map(|b| (b, readies))
    }

    /// Whether a request for a read the secondary serves would be answered in its turn right
    /// after the replies owed now: none of them is from an earlier request batch (whose
    /// outcome, such as a failed transaction, the read must not skip ahead of).
    pub fn may_serve(&self) -> bool {
        self.status != b'E' && !self.batch_error && !self.touched && !self.requests_owed()
    }

    /// Replies owed to requests that end in a ReadyForQuery.
    fn requests_owed(&self) -> bool {
        self.queue.iter().any(|e| {
            matches!(
                e,
                Expect::Query { .. }
                    | Expect::Sync { .. }
                    | Expect::Call
                    | Expect::ShapeDescribe { .. }
                    | Expect::Served { ready: true, .. }
            )
        })
    }

    fn forwarded(&self) -> bool {
        match self.queue.front() {
            Some(Expect::Query { steps, .. }) => !matches!(
                steps.front(),
                Some(
                    Step::Swallow
                        | Step::Xid
                        | Step::HiddenCapture(_)
                        | Step::HoldComplete
                        | Step::Hidden
                        | Step::Commit { forward: false, .. }
                )
            ),
            Some(Expect::InjectedParse { .. }) => false,
            Some(Expect::Parse { forward })
            | Some(Expect::Bind { forward })
            | Some(Expect::Close { forward })
            | Some(Expect::Describe { forward, .. })
            | Some(Expect::Execute { forward, .. }) => *forward,
            _ => true,
        }
    }
}
