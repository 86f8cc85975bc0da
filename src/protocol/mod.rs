//! The PostgreSQL wire protocol, as far as pgbridge needs it, without I/O.
//!
//! - [`frame`] finds frame boundaries in a byte stream without copying it.
//! - [`startup`] reads the packets that come before the first typed frame (SSLRequest,
//!   GSSENCRequest, CancelRequest, StartupMessage), and writes pgbridge's own StartupMessage.
//! - [`auth`] answers a server's Authentication requests for pgbridge's own logins.
//! - [`messages`] the few messages pgbridge writes itself or reads the fields of (ErrorResponse,
//!   BackendKeyData and the SASL offer through pgwire's codec; CancelRequest).
//! - [`wire`] the messages of a session the capture and the secondary's reads decode, edit or
//!   write, by direction: `wire/frontend.rs` (F), `wire/backend.rs` (B).

pub mod auth;
pub mod frame;
pub mod messages;
pub mod startup;
pub mod wire;

/// An error in what a peer sent, with the SQLSTATE that reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    /// The SQLSTATE reported to the client (08P01 protocol_violation, 54000 program_limit_exceeded).
    pub sqlstate: &'static str,
    pub message: String,
}

impl ProtocolError {
    pub fn violation(message: impl Into<String>) -> Self {
        ProtocolError {
            sqlstate: messages::sqlstate::PROTOCOL_VIOLATION,
            message: message.into(),
        }
    }
}
