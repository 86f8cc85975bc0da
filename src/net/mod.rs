//! Connections to PostgreSQL servers, below the proxy and the readers of the secondary.
//!
//! - [`addr`]: where a server is (TCP, or a Unix-domain socket) and connecting to it.
//! - [`cancel`]: the cancel keys pgbridge hands out and the backends behind them.
//! - [`pg_error`]: a tokio-postgres error in words, with its cause.
//! - [`tls`]: TLS for clients (termination) and to the databases (sslmode, certificates).

pub mod addr;
pub mod cancel;
pub mod pg_error;
pub mod tls;

pub use addr::{ServerAddr, ServerStream};
pub use pg_error::error_text;
