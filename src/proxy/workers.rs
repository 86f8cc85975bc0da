//! The threads that run sessions: one single-threaded runtime per thread, each session on one of
//! them from its first byte to its last.
//!
//! A multi-threaded runtime moves tasks between its workers (work stealing) and wakes a parked
//! worker whenever another has work: on a small machine shared with the database and the clients,
//! those futex wake-ups and the cache misses of a task that moved cost more than the relay itself
//! (bench/pgbench.sh measured a quarter more CPU per transaction with two stealing workers than
//! with one thread). A session's two directions are one task that only ever waits on its own
//! sockets, so pinning it to a thread loses nothing: each thread's runtime waits in its own
//! `epoll_wait` and runs its own sessions; the accept loop hands each new connection to the
//! thread with the fewest sessions. The control plane (the accept loop, the admin API, the mirror's
//! applier, the shared state) keeps the runtime `serve` started on.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::error;

/// The session threads; dropping it stops them (their remaining tasks are dropped).
pub struct Workers {
    threads: Vec<Worker>,
    stop: watch::Sender<bool>,
    /// Where the next tie between equally loaded threads starts.
    next: AtomicUsize,
}

struct Worker {
    handle: Handle,
    /// Sessions running on this thread.
    sessions: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts `n` session threads (for `worker_threads = 1`, [`Sessions::Here`] starts none).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("session-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                    runtime.shutdown_timeout(Duration::from_millis(100));
                })?;
            threads.push(Worker {
                handle,
                sessions: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Workers {
            threads,
            stop,
            next: AtomicUsize::new(0),
        })
    }

    /// The thread with the fewest sessions, the tie broken round robin.
    fn pick(&self) -> &Worker {
        let start = self.next.fetch_add(1, Relaxed);
        let n = self.threads.len();
        (0..n)
            .map(|i| &self.threads[(start + i) % n])
            .min_by_key(|w| w.sessions.load(Relaxed))
            .expect("at least one session thread")
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Where sessions run: on the caller's runtime (`worker_threads = 1`), or spread over session
/// threads.
pub enum Sessions {
    Here,
    Threads(Workers),
}

impl Sessions {
    /// One thread (the runtime already running) for 1, else `threads` session threads.
    pub fn start(threads: usize) -> std::io::Result<Sessions> {
        if threads <= 1 {
            Ok(Sessions::Here)
        } else {
            Workers::start(threads).map(Sessions::Threads)
        }
    }

    /// Runs `serve(tcp)` for an accepted connection on a session thread.
    pub fn spawn<F, Fut>(&self, tcp: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let workers = match self {
            Sessions::Here => {
                tokio::spawn(serve(tcp));
                return;
            }
            Sessions::Threads(w) => w,
        };
        // The socket leaves this runtime's reactor and joins the session thread's.
        let std = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "could not hand a connection to a session thread");
                return;
            }
        };
        let worker = workers.pick();
        let sessions = Arc::clone(&worker.sessions);
        sessions.fetch_add(1, Relaxed);
        worker.handle.spawn(async move {
            let _running = Running(sessions);
            match TcpStream::from_std(std) {
                Ok(tcp) => serve(tcp).await,
                Err(e) => error!(error = %e, "a session thread could not take a connection"),
            }
        });
    }
}

/// Counts a session on its thread while it runs.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
