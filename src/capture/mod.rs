//! Capturing committed writes to migrated tables, inside a session (DESIGN.md, principles 5–7).
//!
//! A session with rules runs its requests through a [`drive::Driver`] and its replies through a
//! [`track::Tracker`]: writes to a migrated table go to the primary with RETURNING spliced in,
//! the returned row images are stripped from the client's reply and buffered per transaction
//! ([`txn::TxnBuffer`], savepoints honoured), and a transaction's changes are appended to the
//! journal before its COMMIT reaches the primary; the COMMIT's outcome follows.
//!
//! - [`rows`]: a captured row as a change.
//! - [`txn`]: the open transaction's changes.
//! - [`track`]: replies matched to requests.
//! - [`drive`]: requests, as the capture needs them sent.

pub mod drive;
pub mod rows;
pub mod secondary;
pub mod track;
pub mod txn;

pub use drive::{Driver, Shared};
