//! Where the primary is, and connecting to it: TCP, or a Unix-domain socket when the url's host
//! is a directory (as libpq reads `host=/var/run/postgresql`), which costs the relay far less
//! than loopback TCP when pgbridge runs beside the primary.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

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
