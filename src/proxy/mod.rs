//! The client-facing side: accepting clients and relaying each session to the primary.
//!
//! - [`server`]: the accept loop, the connection limit, the drain on SIGTERM.
//! - [`session`]: one client from SSL negotiation and startup to its orderly end.
//! - [`relay`]: the two directions of a session, frame-aware and copy-free.
//! - [`metrics`]: the relay's counters, looked up once and kept.

pub mod metrics;
pub mod relay;
pub mod server;
pub mod session;
