//! The streams a session relays between (TCP, a Unix socket, TLS over TCP from the client or
//! to the primary), split into the halves its two directions own.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;
/// TLS to the primary.
pub type PrimaryTlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A stream that can be split into halves the two directions own.
pub trait SplitStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send;
    type Write: AsyncWrite + Unpin + Send;
    fn split_halves(self) -> (Self::Read, Self::Write);
}

impl SplitStream for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl SplitStream for tokio::net::UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn split_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl SplitStream for TlsStream {
    type Read = tokio::io::ReadHalf<TlsStream>;
    type Write = tokio::io::WriteHalf<TlsStream>;
    fn split_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

impl SplitStream for PrimaryTlsStream {
    type Read = tokio::io::ReadHalf<PrimaryTlsStream>;
    type Write = tokio::io::WriteHalf<PrimaryTlsStream>;
    fn split_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}
