//! Reads served by the secondary: a read of tables flagged `secondary` (or shared with it) is
//! answered there, not by the primary.
//!
//! A session whose read the router sends to the secondary ([`crate::reads::Route::Secondary`])
//! runs the read rewrite on a connection of its own to the secondary ([`conn::Conn`], pgbridge's
//! credentials), opened on the first such read and kept for the session. What reaches the client
//! is what the primary would have sent:
//!
//! - the row description is the primary's own: for the extended protocol the one the primary
//!   gave when the statement was parsed (pgbridge asks for it with a Describe the client never
//!   sees), with the formats of the client's Bind; for a simple Query the primary describes the
//!   text (Parse and Describe of the unnamed statement, which a simple Query destroys anyway),
//!   once per query shape (literals aside) and session;
//! - the rows and the command tag are the secondary's, in the formats the client asked for (its
//!   Bind goes to the secondary as it is, with its parameters, their formats and the result
//!   formats), with the types the primary inferred for the parameters;
//! - a simple Query whose shape binds ([`crate::sql::BoundRead`]) runs as a Bind of its rewrite
//!   prepared with the literals as parameters, so that the secondary plans it once per shape
//!   and connection, not per text; one the secondary will not prepare runs as text;
//! - the ReadyForQuery carries the primary session's transaction status.
//!
//! The session's settings that shape values (DateStyle, TimeZone, IntervalStyle,
//! client_encoding, and what the client `SET`, such as extra_float_digits or search_path) go
//! along: the client's startup parameters open the connection, and whenever they changed the
//! settings are applied again before the read (`RESET ALL` and the session's `SET`s).
//!
//! A read the secondary cannot answer (unreachable, broken, slower than
//! `[reads] secondary_timeout_ms`, or an error) is served by the primary instead, and the
//! session records a `secondary_error` divergence; after a connection failure the session's
//! reads stay on the primary for `[reads] retry_after_ms` before the secondary is tried again.
//!
//! [`conn`] is the connection's I/O, [`statements`] what it has prepared, [`answer`] collects
//! the answer to one batch; [`access`] asks the primary whether the user may read the tables.

pub mod access;
mod answer;
pub mod conn;
mod statements;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::protocol::wire;
use crate::rules::quote_literal;
use answer::Answer;
pub use answer::Rows;
use conn::{Conn, ConnError};
use statements::Statements;

/// How long connecting and logging in to the secondary may take at most.
const CONNECT_TIMEOUT_MS: u64 = 3000;

/// `[reads]` and where the secondary is.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where the secondary is, pgbridge's credentials there and TLS (for connections and
    /// cancel requests).
    pub secondary: crate::config::PgUrl,
    pub connect_timeout: Duration,
    /// How long one read may take on the secondary before it is served by the primary.
    pub timeout: Duration,
    /// After a connection failure, how long reads stay on the primary.
    pub retry_after: Duration,
    /// How long a read waits for the applier to apply the session's own last mirrored commit.
    pub read_your_writes: Duration,
    /// The primary's privileges, asked for before a user's read is served by the secondary.
    pub access: Arc<access::Access>,
}

impl ServeOptions {
    pub fn new(
        c: &crate::config::ReadsConfig,
        secondary: &crate::config::PgUrl,
        primary: &crate::config::PgUrl,
    ) -> Self {
        ServeOptions {
            access: Arc::new(access::Access::new(primary.clone())),
            secondary: secondary.clone(),
            connect_timeout: Duration::from_millis(c.secondary_timeout_ms.min(CONNECT_TIMEOUT_MS)),
            timeout: Duration::from_millis(c.secondary_timeout_ms),
            retry_after: Duration::from_millis(c.retry_after_ms),
            read_your_writes: Duration::from_millis(c.read_your_writes_ms),
        }
    }
}

/// Why a read was not served by the secondary; it is served by the primary instead.
#[derive(Debug)]
pub enum Failure {
    /// The secondary could not be reached, broke the connection, or took too long.
    Unavailable(String),
    /// The secondary answered with an error (`frame`, its ErrorResponse).
    Error {
        sqlstate: String,
        message: String,
        frame: Bytes,
    },
    /// The secondary failed a moment ago: not tried.
    Resting,
    /// The answer is larger than pgbridge keeps ([`crate::reads::MAX_COMPARED_BYTES`]):
    /// the primary, which streams, serves it.
    TooLarge,
    /// The secondary's columns are not the primary's (a schema changed on one side): the
    /// primary serves the read.
    Columns,
}

/// The client startup parameters that are session settings (not who or where).
pub fn startup_settings<'a>(
    params: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(String, String)> {
    params
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "user" | "database" | "replication"))
        .map(|(k, v)| (k.clone(), v.clone()))
        // What the router sends is a read; the secondary is told so too.
        .chain([("default_transaction_read_only".into(), "on".into())])
        .collect()
}

/// One session's reads served by the secondary.
pub struct SessionServer {
    opts: Arc<ServeOptions>,
    startup: Vec<(String, String)>,
    conn: Option<Conn>,
    resting_until: Option<Instant>,
    /// What the connection has prepared.
    statements: Statements,
    /// The settings script the connection has applied.
    applied: String,
    /// The connection's cancel key, for the session's cancel requests.
    alongside: crate::net::cancel::Alongside,
    /// Whether the last batch's Parse completed.
    parsed: bool,
}

impl SessionServer {
    pub fn new(
        opts: Arc<ServeOptions>,
        startup: Vec<(String, String)>,
        alongside: crate::net::cancel::Alongside,
    ) -> SessionServer {
        SessionServer {
            alongside,
            opts,
            startup,
            conn: None,
            resting_until: None,
            statements: Statements::default(),
            applied: String::new(),
            parsed: false,
        }
    }

    pub fn options(&self) -> &ServeOptions {
        &self.opts
    }

    /// Runs a simple-protocol read; returns its DataRows and CommandComplete, and its
    /// RowDescription.
    pub async fn simple(&mut self, sql: &str, settings: &str) -> Result<Rows, Failure> {
        let request = wire::query(sql);
        self.exchange(settings, &request).await
    }

    /// Runs a simple-protocol read bound to parameters (`bound`, whose text with its literals is
    /// `sql`): prepared on the first read of its text and types, then only bound and executed.
    /// A text the secondary will not prepare goes as `sql` from then on.
    pub async fn bound(
        &mut self,
        bound: &crate::sql::BoundRead,
        sql: &str,
        settings: &str,
    ) -> Result<Rows, Failure> {
        if self.statements.is_unbindable(&bound.sql) {
            return self.simple(sql, settings).await;
        }
        let mut request = BytesMut::new();
        let (name, parse) = self
            .statements
            .prepare_bound(&bound.sql, &bound.types, &mut request);
        request.extend_from_slice(&wire::bind_text("", &name, &bound.values));
        request.extend_from_slice(&wire::describe_portal(""));
        request.extend_from_slice(&wire::execute(""));
        request.extend_from_slice(&wire::sync());
        let answer = self.exchange(settings, &request).await;
        if parse && !self.parsed && matches!(answer, Err(Failure::Error { .. })) {
            self.statements.refuse_bound(&bound.sql, &bound.types);
            tracing::debug!(sql = %bound.sql, "the secondary would not prepare a bound read");
            return self.simple(sql, settings).await;
        }
        answer
    }

    /// Runs the client's Bind `bind` of statement `stmt` (whose read rewrite is `sql`, with
    /// parameter types `types` as the primary inferred them) on the unnamed portal, executed to
    /// the end; returns its DataRows and CommandComplete, and its RowDescription.
    pub async fn portal(
        &mut self,
        stmt: &str,
        sql: &Arc<str>,
        types: &[u32],
        bind: &[u8],
        settings: &str,
    ) -> Result<Rows, Failure> {
        let mut request = BytesMut::new();
        let name = self.statements.prepare(stmt, sql, types, &mut request);
        let Some(bind) = wire::bind_to_statement(bind, &name) else {
            return Err(Failure::Error {
                sqlstate: "08P01".into(),
                message: "malformed Bind".into(),
                frame: Bytes::new(),
            });
        };
        request.extend_from_slice(&bind);
        // The secondary's description of the rows, to hold against the primary's.
        request.extend_from_slice(&wire::describe_portal(""));
        request.extend_from_slice(&wire::execute(""));
        request.extend_from_slice(&wire::sync());
        let answer = self.exchange(settings, &request).await;
        if matches!(answer, Err(Failure::Error { .. })) {
            // Whether the Parse took is unknown: parse again next time.
            self.statements.forget(stmt);
        }
        answer
    }

    /// Drops the connection, and what it had prepared and applied.
    fn close(&mut self) {
        self.conn = None;
        self.set_alongside(None);
        self.statements.clear();
        self.applied.clear();
    }

    fn set_alongside(&self, target: Option<crate::net::cancel::BackendTarget>) {
        *self.alongside.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    /// Sends `request` (after the settings script when it changed) and collects its answer.
    async fn exchange(&mut self, settings: &str, request: &[u8]) -> Result<Rows, Failure> {
        if self.resting_until.is_some_and(|t| Instant::now() < t) {
            return Err(Failure::Resting);
        }
        let timeout = self.opts.timeout;
        let result = tokio::time::timeout(timeout, self.exchange_inner(settings, request)).await;
        let failure = match result {
            Ok(Ok(answer)) => return answer,
            Ok(Err(ConnError::TooLarge)) => {
                // The rest of the answer is on its way: this connection is done for.
                self.close();
                return Err(Failure::TooLarge);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no answer within {} ms ([reads] secondary_timeout_ms)",
                timeout.as_millis()
            ),
        };
        self.close();
        self.resting_until = Some(Instant::now() + self.opts.retry_after);
        Err(Failure::Unavailable(failure))
    }

    /// The exchange itself: the read's answer or refusal, or why the connection failed.
    async fn exchange_inner(
        &mut self,
        settings: &str,
        request: &[u8],
    ) -> Result<Result<Rows, Failure>, ConnError> {
        let apply = self.applied != settings;
        let conn = self.connection().await?;
        let mut batch = BytesMut::new();
        if apply {
            batch.extend_from_slice(&wire::query(settings));
        }
        batch.extend_from_slice(request);
        conn.send(&batch).await?;
        let mut answer = Answer::new(apply);
        while !answer.take(&conn.frame().await?)? {}
        if answer.settings_applied() {
            self.applied = settings.to_string();
        }
        self.parsed = answer.parsed();
        Ok(answer.into_result())
    }

    /// The connection to the secondary, opened (and its cancel key registered) when there is
    /// none.
    async fn connection(&mut self) -> Result<&mut Conn, ConnError> {
        if self.conn.is_none() {
            let secondary = &self.opts.secondary;
            let c = Conn::connect(secondary, &self.startup, self.opts.connect_timeout).await?;
            self.set_alongside(c.key.clone().map(|key| crate::net::cancel::BackendTarget {
                addr: secondary.server_addr().clone(),
                tls: secondary.tls().clone(),
                key,
            }));
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }
}

/// The settings script that makes a secondary session format values as the client's does:
/// back to the startup settings, then the session's own `SET`s, then the reported settings.
pub fn settings_script<'a>(
    sets: impl IntoIterator<Item = &'a str>,
    reported: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut script = String::from("RESET ALL");
    for s in sets {
        script.push_str(";\n");
        script.push_str(s);
    }
    for (k, v) in reported {
        script.push_str(&format!(";\nSET {k} = {}", quote_literal(v)));
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_script_resets_then_sets() {
        let s = settings_script(
            ["SET extra_float_digits = 3"],
            [("DateStyle", "ISO, MDY"), ("TimeZone", "it's")],
        );
        assert_eq!(
            s,
            "RESET ALL;\nSET extra_float_digits = 3;\nSET DateStyle = 'ISO, MDY';\nSET TimeZone = 'it''s'"
        );
    }
}
