//! The client-facing side: accepting clients and relaying each session to the primary.
//!
//! - [`server`]: the accept loop, the connection limit, the drain on SIGTERM.
//! - [`workers`]: the session threads, one single-threaded runtime each.
//! - [`negotiate`]: what comes before a session: TLS, cancel requests, the StartupMessage.
//! - [`session`]: one client from admission to its orderly end.
//! - [`primary`]: the session's connection to the primary, TLS as its url says.
//! - [`stream`]: the streams a session relays between, split into halves.
//! - [`relay`]: the two directions of a session, frame-aware and copy-free.
//! - [`metrics`]: the relay's counters, looked up once and kept.

pub mod metrics;
mod negotiate;
mod primary;
pub mod relay;
pub mod server;
pub mod session;
pub mod stream;
mod workers;
