//! The driver's half of reads served by the secondary ([`crate::reads::secondary`]).
//!
//! Simple protocol: a Query the router sends to the secondary runs there at once; its rows go to
//! the client behind the primary's row description for the query's shape, which the primary
//! gives once per shape and session (Parse, Describe and Sync of the text) and the tracker keeps.
//!
//! Extended protocol: when the client parses a read of a migrated table, pgbridge asks the
//! primary to describe the statement too (the reply never reaches the client), so that it has
//! the primary's parameter types and row description when the statement is run. A Bind of the
//! unnamed portal to such a statement, when the router sends its read to the secondary, is held
//! back with the Describe of that portal; its Execute runs the Bind on the secondary. Every
//! other message releases what was held to the primary, as if nothing had been held. A batch
//! whose every message the secondary answered is answered to its Sync by pgbridge, with the
//! session's transaction status, and costs the primary nothing.
//!
//! The secondary's answer joins the replies to the client in its turn ([`Expect::Served`]).

use bytes::{Bytes, BytesMut};
use std::sync::Arc;

use super::drive::Driver;
use super::expect::Expect;
use crate::divergence::{normalize_query, query_shape, Divergence, Kind as DivergenceKind};
use crate::mirror::ApplierHandle;
use crate::protocol::wire;
use crate::reads::secondary::{settings_script, Failure, SessionServer};
use crate::reads::Route;
use crate::sql::{Analysis, Kind, SessionOp, SetKind};

const QUERY_CANCELED: &str = "57014";

/// Reported settings the secondary's session follows.
const REPORTED: [&str; 3] = ["DateStyle", "IntervalStyle", "TimeZone"];

/// The session's reads served by the secondary.
pub struct Serving<'a> {
    server: SessionServer,
    applier: Option<&'a ApplierHandle>,
    /// A Bind of the unnamed portal held back for the secondary.
    held: Option<Held>,
    /// Messages of this batch went to the primary.
    batch_sent: bool,
    /// Messages of this batch were answered by the secondary.
    batch_served: bool,
    /// The session's `SET`s, by setting name, in order.
    sets: Vec<(String, String)>,
    /// The record of a read the secondary failed, for the primary's Execute of it.
    fallback: Option<Divergence>,
    /// The session's user, whose privileges on the primary a read needs.
    user: String,
    /// The session changed its role or authorization: its privileges are the primary's to
    /// check, and its reads stay there.
    role_changed: bool,
}

struct Held {
    analysis: Arc<Analysis>,
    bind: Bytes,
    stmt: String,
    sql: Arc<str>,
    table: String,
    text: Arc<str>,
    describe: bool,
}

impl<'a> Serving<'a> {
    pub fn new(
        server: SessionServer,
        applier: Option<&'a ApplierHandle>,
        user: String,
    ) -> Serving<'a> {
        Serving {
            user,
            role_changed: false,
            server,
            applier,
            held: None,
            batch_sent: false,
            batch_served: false,
            sets: Vec::new(),
            fallback: None,
        }
    }
}

impl<'a> Driver<'a> {
    /// Reads the router sends to the secondary are served there.
    pub fn with_serving(
        mut self,
        server: SessionServer,
        applier: Option<&'a ApplierHandle>,
        user: String,
    ) -> Self {
        self.serving = Some(Serving::new(server, applier, user));
        self
    }

    /// Whether the session's user may read every table `analysis` reads, as the primary says.
    async fn may_read(&mut self, analysis: &Analysis) -> bool {
        let s = self.serving();
        if s.role_changed {
            return false;
        }
        let tables: Vec<_> = analysis
            .statements
            .iter()
            .flat_map(|st| st.reads.iter().chain(&st.others))
            .collect();
        let access = s.server.options().access.clone();
        let user = s.user.clone();
        let ok = access.may_read(&user, &tables).await;
        if !ok {
            served("no_privilege");
        }
        ok
    }

    fn serving(&mut self) -> &mut Serving<'a> {
        self.serving.as_mut().expect("serving is set")
    }

    /// The read rewrite of `analysis` when the router sends it to the secondary now.
    fn secondary_route<'x>(&self, analysis: &'x Analysis) -> Option<&'x str> {
        let (reads, shared) = self.routing?;
        let in_write_txn = !self.shared.lock().txn.is_empty();
        match crate::reads::route(analysis, &reads.load(), shared, in_write_txn) {
            Route::Secondary { sql } => Some(sql),
            _ => None,
        }
    }

    /// Extended protocol: holds, serves or releases; true when `frame` was taken care of.
    pub(super) async fn serve_extended(&mut self, frame: &[u8]) -> bool {
        let tag = frame[0];
        // A Query is seen by `query`, which analyzes it anyway.
        match tag {
            b'E' => {
                let portal = wire::execute_portal(frame).and_then(|p| self.portals.get(p).cloned());
                self.touch(portal.as_deref());
            }
            b'F' => self.touch(None),
            _ => {}
        }
        if let Some(held) = &mut self.serving().held {
            if tag == b'D' && !held.describe && wire::target(frame) == Some((b'P', "")) {
                held.describe = true;
                return true;
            }
            let runs = tag == b'E'
                && wire::execute_portal(frame) == Some("")
                && wire::execute_max_rows(frame) == Some(0);
            if runs && self.serve_portal().await {
                return true;
            }
            self.release_held();
        }
        match tag {
            b'B' if self.hold_bind(frame) => return true,
            b'S' => {
                let s = self.serving();
                let sent = std::mem::take(&mut s.batch_sent);
                if std::mem::take(&mut s.batch_served) && !sent {
                    self.expect(Expect::Served {
                        bytes: Bytes::new(),
                        ready: true,
                    });
                    self.shared.served.notify_one();
                    return true;
                }
                return false;
            }
            b'Q' => return false,
            _ => {}
        }
        self.serving().batch_sent = true;
        false
    }

    /// Marks the open transaction as one that may have written when a statement sent (`None`:
    /// one pgbridge cannot see into) may write: anything but reads of migrated tables,
    /// transaction control and session settings.
    pub(super) fn touch(&self, analysis: Option<&Analysis>) {
        if self.serving.is_none() {
            return;
        }
        if analysis.is_none_or(Analysis::may_write) {
            self.shared.lock().touched = true;
        }
    }

    /// Holds a Bind of the unnamed portal to a read the secondary serves.
    fn hold_bind(&mut self, frame: &[u8]) -> bool {
        let Some((portal, stmt)) = wire::bind_names(frame) else {
            return false;
        };
        if !portal.is_empty() {
            return false;
        }
        let (Some(analysis), Some(text)) = (self.statements.get(stmt), self.texts.get(stmt)) else {
            return false;
        };
        let (analysis, text) = (analysis.clone(), text.clone());
        let Some(sql) = self.secondary_route(&analysis) else {
            return false;
        };
        let params = wire::bind_params(frame).unwrap_or_default();
        if !analysis.read_params_hold(|n| params.get(n.checked_sub(1)?)?.1) {
            return false;
        }
        {
            let t = self.shared.lock();
            if !t.may_serve() || t.described.get(stmt).is_none_or(|d| d.row.is_none()) {
                return false;
            }
        }
        let table = analysis.first_read();
        self.serving().held = Some(Held {
            analysis: analysis.clone(),
            bind: Bytes::copy_from_slice(frame),
            stmt: stmt.to_string(),
            sql: Arc::from(sql),
            table,
            text,
            describe: false,
        });
        true
    }

    /// Sends what was held to the primary after all.
    fn release_held(&mut self) {
        let s = self.serving();
        let Some(held) = s.held.take() else { return };
        s.batch_sent = true;
        self.bind(&held.bind);
        if held.describe {
            self.describe(&wire::describe_portal(""));
        }
    }

    /// Runs the held Bind on the secondary; false when the primary must serve it instead.
    async fn serve_portal(&mut self) -> bool {
        let Some(held) = self.serving().held.take() else {
            return false;
        };
        let described = self.shared.lock().described.get(&held.stmt).cloned();
        let Some((described, row)) = described.and_then(|d| d.row.clone().map(|r| (d, r))) else {
            self.serving().held = Some(held);
            return false;
        };
        let row = if held.describe {
            match wire::bind_result_formats(&held.bind).and_then(|f| wire::with_formats(&row, &f)) {
                Some(row) => Some(row),
                None => {
                    self.serving().held = Some(held);
                    return false;
                }
            }
        } else {
            None
        };
        if !self.may_read(&held.analysis).await || !self.read_your_writes().await {
            self.serving().held = Some(held);
            return false;
        }
        let script = self.settings_script();
        let answer = self
            .serving()
            .server
            .portal(
                &held.stmt,
                &held.sql,
                &described.params,
                &held.bind,
                &script,
            )
            .await;
        match answer {
            Ok(rows) => {
                let mut bytes =
                    BytesMut::with_capacity(rows.len() + 5 + row.as_ref().map_or(0, |r| r.len()));
                bytes.extend_from_slice(&wire::framed(b'2', &[]));
                if let Some(row) = &row {
                    bytes.extend_from_slice(row);
                }
                bytes.extend_from_slice(&rows);
                self.expect(Expect::Served {
                    bytes: bytes.freeze(),
                    ready: false,
                });
                self.shared.served.notify_one();
                self.serving().batch_served = true;
                served("served");
                true
            }
            Err(f) => {
                let d = self.fell_back(f, &held.table, &held.text);
                let s = self.serving();
                s.fallback = d;
                s.held = Some(held);
                false
            }
        }
    }

    /// The record of the read the secondary just failed, if any, for its Execute.
    pub(super) fn take_fallback(&mut self) -> Option<Divergence> {
        self.serving.as_mut()?.fallback.take()
    }

    /// Serves a simple-protocol read on the secondary. `Err` when the primary must serve it,
    /// with the record to keep if the primary answers without error.
    pub(super) async fn serve_query(
        &mut self,
        analysis: &Analysis,
        text: &str,
    ) -> Result<(), Option<Divergence>> {
        let Some(sql) = self.secondary_route(analysis) else {
            return Err(None);
        };
        if !self.shared.lock().may_serve()
            || !self.may_read(analysis).await
            || !self.read_your_writes().await
        {
            return Err(None);
        }
        let script = self.settings_script();
        let answer = self.serving().server.simple(sql, &script).await;
        let rows = match answer {
            Ok(rows) => rows,
            // The client cancelled it (the cancel went to the secondary too): it ends here.
            Err(Failure::Error {
                sqlstate, frame, ..
            }) if sqlstate == QUERY_CANCELED => {
                self.expect(Expect::Served {
                    bytes: frame,
                    ready: true,
                });
                self.shared.served.notify_one();
                served("cancelled");
                return Ok(());
            }
            Err(f) => return Err(self.fell_back(f, &analysis.first_read(), text)),
        };
        served("served");
        let shape = query_shape(text);
        let known = self.shared.lock().shapes.get(&shape).cloned();
        match known {
            Some(row) => {
                let mut bytes = BytesMut::new();
                if let Some(row) = row {
                    bytes.extend_from_slice(&row);
                }
                bytes.extend_from_slice(&rows);
                self.expect(Expect::Served {
                    bytes: bytes.freeze(),
                    ready: true,
                });
                self.shared.served.notify_one();
            }
            None => {
                // The primary describes the text (as its Query would have, without running it).
                self.expect(Expect::ShapeDescribe {
                    shape,
                    answer: rows.freeze(),
                    row: None,
                    failed: false,
                });
                self.out.extend_from_slice(&wire::parse("", text));
                self.out.extend_from_slice(&wire::describe_statement(""));
                self.out.extend_from_slice(&wire::sync());
            }
        }
        Ok(())
    }

    /// After the client's Parse of `name`: asks the primary to describe a read the secondary
    /// may serve, unless a statement of the same text and declared types was described.
    pub(super) fn describe_for_serving(
        &mut self,
        name: &str,
        query: &str,
        parse: &[u8],
        analysis: &Analysis,
    ) {
        let mut t = self.shared.lock();
        t.described.remove(name);
        let read = matches!(analysis.statements.as_slice(), [s] if s.kind == Kind::Read)
            && analysis.read_rewrite().is_some();
        if !read {
            return;
        }
        let key = format!("{query}\0{:?}", wire::parse_param_types(parse));
        if let Some(d) = t.described_texts.get(&key).cloned() {
            t.described.insert(name.to_string(), d);
            return;
        }
        drop(t);
        self.expect(Expect::DescribeStatement {
            name: name.to_string(),
            key,
            params: Vec::new(),
        });
        self.out.extend_from_slice(&wire::describe_statement(name));
    }

    /// Follows the session's `SET`, `RESET` and `DISCARD`, for the secondary's session.
    pub(super) fn follow_settings(&mut self, analysis: &Analysis, text: &str) {
        for s in &analysis.statements {
            let Kind::Session(op) = &s.kind else { continue };
            let stmt = text.get(s.text.clone()).unwrap_or_default().trim();
            let serving = self.serving();
            let sets = &mut serving.sets;
            match op {
                SessionOp::Set(SetKind::Role) => serving.role_changed = true,
                SessionOp::Set(SetKind::Setting(name)) => {
                    sets.retain(|(n, _)| n != name);
                    sets.push((name.clone(), stmt.to_string()));
                }
                SessionOp::Reset(None) | SessionOp::Discard { all: true } => sets.clear(),
                SessionOp::Reset(Some(name)) => sets.retain(|(n, _)| n != name),
                _ => {}
            }
        }
    }

    fn settings_script(&mut self) -> String {
        let reported: Vec<(&'static str, String)> = {
            let t = self.shared.lock();
            REPORTED
                .iter()
                .filter_map(|k| t.settings.get(*k).map(|v| (*k, v.clone())))
                .collect()
        };
        let sets = &self.serving().sets;
        settings_script(
            sets.iter().map(|(_, s)| s.as_str()),
            reported.iter().map(|(k, v)| (*k, v.as_str())),
        )
    }

    /// Read-your-writes: false when the session's last mirrored commit is not applied on the
    /// secondary within `[reads] read_your_writes_ms`.
    async fn read_your_writes(&mut self) -> bool {
        let Some(id) = self.shared.lock().last_commit else {
            return true;
        };
        let s = self.serving();
        let Some(applier) = s.applier else {
            return true;
        };
        if applier.applied() >= id {
            return true;
        }
        let wait = s.server.options().read_your_writes;
        let applied = applier.wait_applied(id, wait).await.is_ok();
        if !applied {
            served("read_your_writes");
        }
        applied
    }

    /// The secondary failed a read: it goes to the primary. A connection failure is recorded
    /// at once; an error is returned, to be recorded only if the primary answers the read
    /// without one (a division by zero fails on both sides alike, and is no divergence).
    fn fell_back(&self, failure: Failure, table: &str, text: &str) -> Option<Divergence> {
        let (secondary, reason, error) = match failure {
            Failure::Resting => {
                served("resting");
                return None;
            }
            Failure::TooLarge => {
                served("too_large");
                return None;
            }
            Failure::Unavailable(reason) => ("connection".to_string(), reason, false),
            Failure::Error {
                sqlstate, message, ..
            } => (sqlstate, message, true),
        };
        served("fallback");
        tracing::warn!(session = self.session, table, %reason, "a read for the secondary is served by the primary");
        let mut d = Divergence::new(DivergenceKind::SecondaryError, table);
        d.query = normalize_query(text);
        d.secondary = secondary;
        d.detail = serde_json::json!({ "reason": reason, "served_by": "primary" });
        d.session = Some(self.session);
        if error {
            return Some(d);
        }
        self.recorder.record(d);
        None
    }
}

/// Counts a read the router sent to the secondary, by what became of it.
fn served(result: &'static str) {
    metrics::counter!("pgbridge_secondary_reads_total", "result" => result).increment(1);
}
