//! The driver's half of reads served by the secondary ([`crate::reads::secondary`]): what the
//! session's reads there need (its settings, its user's privileges, its own writes applied), and
//! what becomes of a read the secondary failed.
//!
//! - [`simple`]: a simple-protocol Query served there.
//! - [`extended`]: a Bind held back and its Execute served there.
//!
//! The secondary's answer joins the replies to the client in its turn ([`Expect::Served`]).

mod extended;
mod simple;
mod snapshot;

use bytes::Bytes;
use std::sync::Arc;

use super::drive::Driver;
use crate::divergence::{normalize_query, Divergence, Kind as DivergenceKind};
use crate::mirror::ApplierHandle;
use crate::reads::secondary::{settings_script, Failure, SessionServer};
use crate::reads::Route;
use crate::sql::isolation::Isolation;
use crate::sql::{Analysis, Kind, SessionOp, SetKind};

/// Reported settings the secondary's session follows.
const REPORTED: [&str; 3] = ["DateStyle", "IntervalStyle", "TimeZone"];

/// The session's reads served by the secondary.
pub struct Serving<'a> {
    pub(in crate::capture) server: SessionServer,
    applier: Option<&'a ApplierHandle>,
    /// A Bind of the unnamed portal held back for the secondary.
    held: Option<Held>,
    /// Messages of this batch went to the primary.
    batch_sent: bool,
    /// Messages of this batch were answered by the secondary.
    batch_served: bool,
    /// The record of a read the secondary failed, for the primary's Execute of it.
    fallback: Option<Divergence>,
    /// The session's user, whose privileges on the primary a read needs.
    pub(in crate::capture) user: String,
    /// The session's database, and the isolation level its startup packet made the default.
    database: String,
    startup_level: Option<Isolation>,
    /// The session changed its role or authorization: its privileges are the primary's to
    /// check, and its reads stay there.
    role_changed: bool,
}

pub(super) struct Held {
    analysis: Arc<Analysis>,
    bind: Bytes,
    stmt: String,
    sql: Arc<str>,
    table: String,
    text: Arc<str>,
    describe: bool,
}

impl<'a> Serving<'a> {
    /// `params`: the client's startup packet.
    pub fn new(
        server: SessionServer,
        applier: Option<&'a ApplierHandle>,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Serving<'a> {
        let param = |k: &str| params.get(k).cloned().unwrap_or_default();
        Serving {
            user: param("user"),
            database: param("database"),
            startup_level: crate::sql::isolation::startup_default(params),
            role_changed: false,
            server,
            applier,
            held: None,
            batch_sent: false,
            batch_served: false,
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
        params: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        self.serving = Some(Serving::new(server, applier, params));
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
        match self.route(analysis) {
            Route::Secondary { sql } => Some(sql),
            _ => None,
        }
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

    /// Notes a `SET ROLE` or `SET SESSION AUTHORIZATION` the session sends: its reads stay on
    /// the primary from then on. (Its other settings follow it once they completed,
    /// [`crate::capture::settings`].)
    pub(in crate::capture) fn follow_settings(&mut self, analysis: &Analysis) {
        let role = analysis
            .statements
            .iter()
            .any(|s| s.kind == Kind::Session(SessionOp::Set(SetKind::Role)));
        if role {
            self.serving().role_changed = true;
        }
    }

    pub(in crate::capture) fn settings_script(&mut self) -> String {
        let t = self.shared.lock();
        let reported: Vec<(&'static str, &str)> = REPORTED
            .iter()
            .filter_map(|k| t.settings.get(*k).map(|v| (*k, v.as_str())))
            .collect();
        let sets = t.sets.effective();
        settings_script(sets.iter().map(String::as_str), reported)
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
            Failure::Columns => (
                "columns".to_string(),
                "the secondary's columns are not the primary's".to_string(),
                false,
            ),
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
pub(super) fn served(result: &'static str) {
    metrics::counter!("pgbridge_secondary_reads_total", "result" => result).increment(1);
}
