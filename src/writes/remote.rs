//! One session's connection to a secondary on another server, for the statements on tables
//! whose writes are there (src/capture/drive/lockstep.rs): opened with pgbridge's credentials
//! and the client's startup settings on the first such statement, kept for the session, its
//! transaction kept in step with the client's on the primary.
//!
//! [`Remote::run`] sends one batch and collects every reply up to its ReadyForQuery, which
//! tells the secondary's transaction status. A lost connection is an error of its own
//! ([`Lost`]): whether what was sent took effect is unknown.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::config::PgUrl;
use crate::protocol::{messages, wire};
use crate::reads::secondary::conn::{Conn, ConnError};

/// How long connecting and logging in may take at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection to the secondary broke (or could not be made): why.
#[derive(Debug)]
pub struct Lost(pub String);

/// The secondary's replies to one batch.
#[derive(Debug)]
pub struct Reply {
    /// Every reply but the ReadyForQuery (and ParameterStatus and notifications, which are
    /// the secondary session's own), in order.
    pub frames: Bytes,
    /// The first ErrorResponse: its SQLSTATE and message, and the frame.
    pub error: Option<(String, String, Bytes)>,
    /// The transaction status of the ReadyForQuery.
    pub status: u8,
}

/// One session's connection to the secondary.
pub struct Remote {
    url: PgUrl,
    startup: Vec<(String, String)>,
    conn: Option<Conn>,
    /// The settings script last applied.
    applied: String,
    /// Whether the secondary allows PREPARE TRANSACTION (max_prepared_transactions > 0).
    two_phase: Option<bool>,
}

impl Remote {
    /// `startup`: the client's startup settings (not who or where).
    pub fn new(url: PgUrl, startup: Vec<(String, String)>) -> Remote {
        Remote {
            url,
            startup,
            conn: None,
            applied: String::new(),
            two_phase: None,
        }
    }

    /// Whether a connection is open.
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Runs a simple-protocol Query, the session's `settings` script first when it changed.
    pub async fn query(&mut self, sql: &str, settings: &str) -> Result<Reply, Lost> {
        let mut batch = BytesMut::new();
        let apply = self.applied != settings && !settings.is_empty();
        if apply {
            batch.extend_from_slice(&wire::query(settings));
        }
        batch.extend_from_slice(&wire::query(sql));
        let result = self.exchange(&batch, 1 + apply as usize).await;
        match result {
            Ok(mut replies) => {
                if apply {
                    let script = replies.remove(0);
                    if script.error.is_some() {
                        return Ok(script);
                    }
                    self.applied = settings.to_string();
                }
                Ok(replies.pop().expect("one reply per Query"))
            }
            Err(e) => {
                self.conn = None;
                self.applied.clear();
                Err(e)
            }
        }
    }

    /// Runs pgbridge's own statement; its error as a message.
    pub async fn statement(&mut self, sql: &str) -> Result<Result<u8, String>, Lost> {
        let reply = self.query(sql, "").await?;
        Ok(match reply.error {
            Some((code, message, _)) => Err(format!("{message} (SQLSTATE {code})")),
            None => Ok(reply.status),
        })
    }

    /// Whether the secondary can prepare transactions (asked once per connection).
    pub async fn two_phase(&mut self) -> Result<bool, Lost> {
        if let Some(known) = self.two_phase {
            return Ok(known);
        }
        let reply = self
            .query(
                "SELECT current_setting('max_prepared_transactions')::int > 0",
                "",
            )
            .await?;
        let yes = reply.error.is_none() && first_value(&reply.frames).as_deref() == Some("t");
        self.two_phase = Some(yes);
        Ok(yes)
    }

    /// Sends `batch` and collects the replies of its `readies` ReadyForQuery.
    async fn exchange(&mut self, batch: &[u8], readies: usize) -> Result<Vec<Reply>, Lost> {
        let conn = self.connection().await?;
        conn.send(batch).await.map_err(lost)?;
        let mut replies = Vec::with_capacity(readies);
        let mut frames = BytesMut::new();
        let mut error = None;
        while replies.len() < readies {
            let frame = conn.frame().await.map_err(lost)?;
            match frame[0] {
                b'Z' => replies.push(Reply {
                    frames: std::mem::take(&mut frames).freeze(),
                    error: error.take(),
                    status: frame.get(5).copied().unwrap_or(b'E'),
                }),
                b'S' | b'A' => {}
                b'E' => {
                    if error.is_none() {
                        let fields = messages::error_fields(&frame);
                        let field = |k: u8| {
                            fields
                                .iter()
                                .find(|(f, _)| *f == k)
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default()
                        };
                        error = Some((field(b'C'), field(b'M'), frame.clone()));
                    }
                    frames.extend_from_slice(&frame);
                }
                _ => frames.extend_from_slice(&frame),
            }
        }
        Ok(replies)
    }

    async fn connection(&mut self) -> Result<&mut Conn, Lost> {
        if self.conn.is_none() {
            let c = Conn::connect(&self.url, &self.startup, CONNECT_TIMEOUT)
                .await
                .map_err(lost)?;
            self.conn = Some(c);
            self.two_phase = None;
            self.applied.clear();
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }
}

/// The client startup parameters that are session settings, for its connection here (which
/// writes, unlike the one reads are served on).
pub fn startup<'a>(
    params: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(String, String)> {
    crate::reads::secondary::startup_settings(params)
        .into_iter()
        .filter(|(k, _)| k != "default_transaction_read_only")
        .collect()
}

fn lost(e: ConnError) -> Lost {
    Lost(e.to_string())
}

/// The first column of the first DataRow of `frames`, as text.
pub fn first_value(frames: &[u8]) -> Option<String> {
    let mut rest = frames;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().ok()?) as usize;
        let (frame, tail) = rest.split_at((len + 1).min(rest.len()));
        if frame[0] == b'D' && frame.len() >= 11 {
            let n = i32::from_be_bytes(frame[7..11].try_into().ok()?);
            if n < 0 {
                return None;
            }
            let value = frame.get(11..11 + n as usize)?;
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = tail;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_of_the_first_row_is_read_past_other_frames() {
        let mut frames = BytesMut::new();
        frames.extend_from_slice(&wire::framed(b'T', &[0, 0]));
        let mut row = vec![0u8, 1];
        row.extend_from_slice(&1i32.to_be_bytes());
        row.push(b't');
        frames.extend_from_slice(&wire::framed(b'D', &row));
        frames.extend_from_slice(&wire::framed(b'C', b"SELECT 1\0"));
        assert_eq!(first_value(&frames).as_deref(), Some("t"));
        let mut null = vec![0u8, 1];
        null.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(first_value(&wire::framed(b'D', &null)), None);
        assert_eq!(first_value(b""), None);
    }
}
