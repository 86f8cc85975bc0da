//! TLS on both sides of pgbridge: terminating it for clients, and starting it to the
//! databases.
//!
//! rustls with the `ring` provider throughout.
//!
//! - [`accept`]: the acceptor for `[tls]`, for clients that ask for TLS.
//! - [`client`]: libpq's `sslmode` and the TLS of one url, built when the config is read, with
//!   [`files`] finding and reading its certificates as libpq does and [`verify`] the checks
//!   rustls does not have (none, the chain without the name).
//! - [`handshake`]: SSLRequest and the handshake on a connection pgbridge opens itself (the
//!   relayed sessions, the secondary's serving connections, cancel requests), libpq's attempts
//!   per mode, failures in words.
//! - [`postgres`]: the same for pgbridge's tokio-postgres connections, with [`binding`]'s
//!   channel binding data.
//! - [`pem`]: reading PEM files.
//!
//! A client cannot complete SCRAM channel binding through pgbridge: its TLS session ends at
//! pgbridge, and the primary's begins there. The relay therefore never offers a client
//! SCRAM-SHA-256-PLUS (`proxy/relay/down.rs`).

pub mod accept;
pub mod binding;
pub mod client;
mod files;
pub mod handshake;
pub mod pem;
pub mod postgres;
#[cfg(test)]
pub(crate) mod testing;
mod verify;

pub use accept::{acceptor, TlsError};
pub use client::{Check, ClientTls, ClientTlsError, SslMode, TlsSettings};
pub use handshake::{retry_after, Attempt, ClientTlsStream, ConnectError, HandshakeError, Secured};
pub use postgres::{connect, MakeRustls, PgConnection};
