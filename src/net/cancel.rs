//! Cancel keys.
//!
//! A client cancels a query by opening a new connection and sending the key it got in
//! BackendKeyData. pgbridge hands each client the primary's own process id (so that
//! `PQbackendPID()`, a notification's sender pid, `pg_terminate_backend` and `pg_stat_activity`
//! mean what they mean directly) with a secret of its own, and keeps the map from those keys to
//! the primary's; a CancelRequest with a known key is forwarded to the primary with the real
//! secret, and to the session's connection to the secondary when it has one, over TLS when the
//! server's url asks for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::addr::ServerAddr;
use super::tls::{Attempt, ClientTls};
use crate::protocol::messages::CancelKey;

/// Where a session's backend lives, how TLS is used there, and the key that cancels its query.
#[derive(Debug, Clone)]
pub struct BackendTarget {
    pub addr: ServerAddr,
    pub tls: ClientTls,
    pub key: CancelKey,
}

/// A second backend a session may be waiting on (its connection to the secondary, for reads
/// served there), set while it exists: a cancel goes to it too.
pub type Alongside = Arc<Mutex<Option<BackendTarget>>>;

/// A live session's primary backend and the backend alongside.
type Entry = (BackendTarget, Option<Alongside>);

/// The keys of the live sessions: the primary's process id and the secret pgbridge handed out.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<(i32, Bytes), Entry>>,
}

/// Keeps a key registered for as long as its session lives.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub client_key: CancelKey,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.sessions.lock() {
            map.remove(&(self.client_key.pid, self.client_key.secret.clone()));
        }
    }
}

impl CancelRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers the primary's key of a new session and returns the key to hand to the client:
    /// the primary's process id with a random secret as long as the primary's (protocol 3.2's
    /// long keys included).
    pub fn register(
        self: &Arc<Self>,
        target: BackendTarget,
        alongside: Option<Alongside>,
    ) -> Registration {
        let mut rng = rand::rng();
        let pid = target.key.pid;
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let secret = loop {
            let mut secret = vec![0u8; target.key.secret.len()];
            rng.fill(&mut secret[..]);
            let secret = Bytes::from(secret);
            if !map.contains_key(&(pid, secret.clone())) {
                break secret;
            }
        };
        map.insert((pid, secret.clone()), (target, alongside));
        Registration {
            registry: Arc::clone(self),
            client_key: CancelKey { pid, secret },
        }
    }

    /// The backends a client's key cancels (the primary's, and the secondary's when the session
    /// has a connection there), if the key is one pgbridge handed out and still live.
    pub fn lookup(&self, client_key: &CancelKey) -> Option<Vec<BackendTarget>> {
        let map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let (target, alongside) = map.get(&(client_key.pid, client_key.secret.clone()))?;
        let mut targets = vec![target.clone()];
        if let Some(other) = alongside
            .as_ref()
            .and_then(|a| a.lock().unwrap_or_else(|e| e.into_inner()).clone())
        {
            targets.push(other);
        }
        Some(targets)
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sends a CancelRequest for `target` to its server, as a client would. The server answers
/// nothing; it closes the connection.
pub async fn send_cancel(target: &BackendTarget, timeout: Duration) -> std::io::Result<()> {
    let request = target.key.to_cancel_request();
    // A cancel has no login to be refused: the first attempt that connects is the one, and
    // after a failed `prefer` handshake, a plain one.
    for &attempt in target.tls.attempts() {
        match target
            .tls
            .open(&target.addr, "primary", attempt, timeout)
            .await
        {
            Ok(mut stream) => return write_and_close(&mut stream, &request).await,
            Err(e) if e.handshake_failed() && attempt == Attempt::TlsIfOffered => continue,
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
    Err(std::io::Error::other("no connection attempt left"))
}

async fn write_and_close<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> std::io::Result<()> {
    s.write_all(data).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(secret: &'static [u8]) -> BackendTarget {
        BackendTarget {
            addr: ServerAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 5432,
            },
            tls: ClientTls::disabled(),
            key: CancelKey {
                pid: 77,
                secret: Bytes::from_static(secret),
            },
        }
    }

    #[test]
    fn a_handed_out_key_finds_its_backend_until_the_session_ends() {
        let registry = CancelRegistry::new();
        let alongside: Alongside = Arc::new(Mutex::new(None));
        let reg = registry.register(target(&[1, 2, 3, 4]), Some(alongside.clone()));
        assert_eq!(reg.client_key.secret.len(), 4);
        assert_eq!(
            reg.client_key.pid, 77,
            "the client sees the primary's own process id"
        );
        assert_ne!(
            &reg.client_key.secret[..],
            &[1, 2, 3, 4],
            "but a secret of pgbridge's"
        );
        let found = registry.lookup(&reg.client_key).expect("registered");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key.pid, 77);
        // A connection to the secondary is cancelled along.
        *alongside.lock().unwrap() = Some(target(&[9, 9, 9, 9]));
        let found = registry.lookup(&reg.client_key).expect("registered");
        assert_eq!(found.len(), 2);
        assert_eq!(&found[1].key.secret[..], &[9, 9, 9, 9]);
        let mut wrong = reg.client_key.clone();
        wrong.secret = Bytes::from_static(&[1, 2, 3, 4]);
        assert!(
            registry.lookup(&wrong).is_none(),
            "the primary's own secret cancels nothing through pgbridge"
        );
        let key = reg.client_key.clone();
        drop(reg);
        assert!(registry.lookup(&key).is_none());
        assert!(registry.is_empty());
    }

    #[test]
    fn long_secrets_of_protocol_3_2_keep_their_length() {
        let registry = CancelRegistry::new();
        let reg = registry.register(target(&[5; 32]), None);
        assert_eq!(reg.client_key.secret.len(), 32);
    }

    #[test]
    fn a_process_id_seen_twice_is_told_apart_by_the_secret() {
        // A backend's pid may be reused by a new session before the old one is dropped.
        let registry = CancelRegistry::new();
        let old = registry.register(target(&[1; 4]), None);
        let new = registry.register(target(&[2; 4]), None);
        assert_eq!(old.client_key.pid, new.client_key.pid);
        let secret_of = |k: &CancelKey| registry.lookup(k).map(|t| t[0].key.secret.clone());
        assert_eq!(secret_of(&old.client_key).as_deref(), Some(&[1u8; 4][..]));
        assert_eq!(secret_of(&new.client_key).as_deref(), Some(&[2u8; 4][..]));
        drop(old);
        assert_eq!(secret_of(&new.client_key).as_deref(), Some(&[2u8; 4][..]));
    }
}
