//! Extended protocol: when the client parses a read of a migrated table, pgbridge asks the
//! primary to describe the statement too (the reply never reaches the client), so that it has
//! the primary's parameter types and row description when the statement is run. A Bind of the
//! unnamed portal to such a statement, when the router sends its read to the secondary, is held
//! back with the Describe of that portal; its Execute runs the Bind on the secondary. Every
//! other message releases what was held to the primary, as if nothing had been held. A batch
//! whose every message the secondary answered is answered to its Sync by pgbridge, with the
//! session's transaction status, and costs the primary nothing.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{served, Held};
use crate::capture::drive::{Driver, Side};
use crate::capture::expect::Expect;
use crate::divergence::Divergence;
use crate::protocol::wire;
use crate::reads::secondary::Failure;
use crate::sql::{Analysis, Kind};

impl<'a> Driver<'a> {
    /// Extended protocol: holds, serves or releases; true when `frame` was taken care of.
    pub(in crate::capture) async fn serve_extended(&mut self, frame: &[u8]) -> bool {
        let tag = frame[0];
        // A Query is seen by `query`, which analyzes it anyway.
        match tag {
            b'E' => {
                let portal = wire::execute_portal(frame);
                // The held Bind's portal is not the driver's yet: its statement is the read.
                let analysis = match (&self.serving().held, portal) {
                    (Some(held), Some("")) => Some(held.analysis.clone()),
                    _ => portal.and_then(|p| self.portals.get(p).cloned()),
                };
                self.touch(analysis.as_deref());
            }
            b'F' => self.touch(None),
            _ => {}
        }
        if self.serving().held.is_some() {
            if self.keep_held(frame).await {
                return true;
            }
            self.release_held();
        }
        match tag {
            b'B' => self.hold_bind(frame),
            b'S' => self.answer_sync(),
            b'Q' => false,
            _ => {
                self.serving().batch_sent = true;
                false
            }
        }
    }

    /// With a Bind held: the Describe of its portal is held with it, and its Execute runs it
    /// on the secondary. False when `frame` releases what was held to the primary.
    pub(super) async fn keep_held(&mut self, frame: &[u8]) -> bool {
        let tag = frame[0];
        if let Some(held) = &mut self.serving().held {
            if tag == b'D' && !held.describe && wire::target(frame) == Some((b'P', "")) {
                held.describe = true;
                return true;
            }
        }
        let runs = tag == b'E'
            && wire::execute_portal(frame) == Some("")
            && wire::execute_max_rows(frame) == Some(0);
        runs && self.serve_portal().await
    }

    /// A Sync of a batch the secondary answered whole is answered by pgbridge, with the
    /// session's transaction status; the primary sees nothing of it.
    pub(super) fn answer_sync(&mut self) -> bool {
        let s = self.serving();
        let sent = std::mem::take(&mut s.batch_sent);
        if !std::mem::take(&mut s.batch_served) || sent {
            return false;
        }
        self.queue_served(Bytes::new(), true);
        true
    }

    /// Holds a Bind of the unnamed portal to a read the secondary serves.
    pub(super) fn hold_bind(&mut self, frame: &[u8]) -> bool {
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
        // The types the primary gave the parameters, to decode binary values by.
        let oids = match analysis.read_params().is_empty() {
            true => Vec::new(),
            false => self
                .shared
                .lock()
                .described
                .get(stmt)
                .map(|d| d.params.clone())
                .unwrap_or_default(),
        };
        let hold = analysis.read_params_hold(|n| {
            let i = n.checked_sub(1)?;
            let (format, value) = *params.get(i)?;
            let type_oid = oids.get(i).copied().unwrap_or(0);
            Some(crate::sql::read::Bound {
                format,
                type_oid,
                value,
            })
        });
        if !hold {
            return false;
        }
        {
            let mut t = self.shared.lock();
            t.refresh_descriptions();
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
    pub(super) fn release_held(&mut self) {
        let s = self.serving();
        let Some(held) = s.held.take() else { return };
        s.batch_sent = true;
        self.bind(&held.bind);
        if held.describe {
            self.describe(&wire::describe_portal(""));
        }
    }

    /// Runs the held Bind on the secondary; false when the primary must serve it instead.
    pub(super) async fn serve_portal(&mut self) -> bool {
        let Some(held) = self.serving().held.take() else {
            return false;
        };
        let answer = self.run_held(&held).await;
        match answer {
            Some(Ok(bytes)) => {
                self.queue_served(bytes, false);
                self.serving().batch_served = true;
                served("served");
                self.count_read(&held.analysis, Side::Secondary);
                true
            }
            Some(Err(f)) => {
                let d = self.fell_back(f, &held.table, &held.text);
                let s = self.serving();
                s.fallback = d;
                s.held = Some(held);
                false
            }
            None => {
                self.serving().held = Some(held);
                false
            }
        }
    }

    /// The secondary's answer to the held Bind: BindComplete, the primary's row description
    /// when the client described the portal, the secondary's rows and tag. `None` when the
    /// read may not be served there (no description, no privilege, its own writes not applied).
    pub(super) async fn run_held(&mut self, held: &Held) -> Option<Result<Bytes, Failure>> {
        let described = self.shared.lock().described.get(&held.stmt).cloned()?;
        let row = described.row.clone()?;
        let row = match held.describe {
            true => Some(
                wire::bind_result_formats(&held.bind).and_then(|f| wire::with_formats(&row, &f))?,
            ),
            false => None,
        };
        if !self.snapshot_allows().await
            || !self.may_read(&held.analysis).await
            || !self.read_your_writes().await
        {
            return None;
        }
        let script = self.settings_script();
        let server = &mut self.serving().server;
        let answer = server
            .portal(
                &held.stmt,
                &held.sql,
                &described.params,
                &held.bind,
                &script,
            )
            .await;
        let served = match answer {
            Ok(served) => served,
            Err(f) => return Some(Err(f)),
        };
        // The statement's columns when the client prepared it, and the secondary's now.
        let same = served.description.as_deref().is_some_and(|theirs| {
            wire::same_columns(described.row.as_deref().unwrap_or_default(), theirs)
        });
        if !same {
            self.shared.lock().described.remove(&held.stmt);
            return Some(Err(Failure::Columns));
        }
        let rows = served.rows;
        let mut bytes =
            BytesMut::with_capacity(rows.len() + 5 + row.as_ref().map_or(0, |r| r.len()));
        bytes.extend_from_slice(&wire::framed(b'2', &[]));
        if let Some(row) = &row {
            bytes.extend_from_slice(row);
        }
        bytes.extend_from_slice(&rows);
        Some(Ok(bytes.freeze()))
    }

    /// The record of the read the secondary just failed, if any, for its Execute.
    pub(in crate::capture) fn take_fallback(&mut self) -> Option<Divergence> {
        self.serving.as_mut()?.fallback.take()
    }

    /// After the client's Parse of `name`: asks the primary to describe a read the secondary
    /// may serve, unless a statement of the same text and declared types was described.
    pub(in crate::capture) fn describe_for_serving(
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
        if let Some(d) = t.described_texts.get(&key).and_then(|d| d.fresh()) {
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
}
