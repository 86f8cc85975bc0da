//! Where the primary is, and connecting to it: TCP, or a Unix-domain socket when the url's host
//! is a directory (as libpq reads `host=/var/run/postgresql`), which costs the relay far less
//! than loopback TCP when pgbridge runs beside the primary. TLS on top is `tls/handshake.rs`'s.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::tls::ClientTlsStream;

/// The address of a PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    Tcp {
        host: String,
        port: u16,
    },
    /// The socket file, `<dir>/.s.PGSQL.<port>`.
    Unix(PathBuf),
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            ServerAddr::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A connection to a server.
pub enum ServerStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<ClientTlsStream<TcpStream>>),
}

impl ServerAddr {
    /// Connects within `timeout`; the error text names the address.
    pub async fn connect(&self, timeout: Duration) -> Result<ServerStream, String> {
        self.connect_to("primary", timeout).await
    }

    /// As [`ServerAddr::connect`], the error naming the server as `what`.
    pub async fn connect_to(&self, what: &str, timeout: Duration) -> Result<ServerStream, String> {
        let attempt = async {
            match self {
                ServerAddr::Tcp { host, port } => {
                    let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                    tcp.set_nodelay(true)?;
                    Ok::<_, std::io::Error>(ServerStream::Tcp(tcp))
                }
                ServerAddr::Unix(path) => Ok(ServerStream::Unix(UnixStream::connect(path).await?)),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(self.failure(what, &e)),
            Err(_) => Err(self.failure(what, &"timed out")),
        }
    }

    fn failure(&self, what: &str, e: &dyn fmt::Display) -> String {
        format!("pgbridge could not connect to the {what} at {self}: {e}")
    }
}

// A server stream reads and writes whatever it is, for the few exchanges pgbridge has with a
// server before handing the concrete stream on (the startup, a cancel request).
impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
