//! Writes on a secondary of another server: a session's statements on a table whose writes are
//! there run on a connection of the session's own to it ([`Remote`]), in step with the
//! client's transaction on the primary.
//!
//! - Outside a transaction block, such a Query runs there alone, as its own transaction; its
//!   replies reach the client in their turn, with the primary session's status.
//! - In a block, the secondary's block is begun alike on the first such statement (the
//!   client's BEGIN, then its savepoints still open), and follows the client's SAVEPOINT,
//!   RELEASE, ROLLBACK TO and ROLLBACK. A statement that fails there fails the client's
//!   transaction on the primary too (pgbridge's own statement raises the same SQLSTATE there,
//!   its reply kept from the client, which gets the secondary's error).
//! - At COMMIT: a block that wrote only there commits there first, then on the primary (its
//!   error, if it fails there, is the client's, the primary's part rolled back). A block that
//!   wrote both sides commits in two phases (src/writes/twophase.rs): prepared on the
//!   secondary, committed on the primary, which decides. Where the secondary cannot prepare
//!   transactions, the statement that would make a block write both sides is refused with
//!   SQLSTATE 0A000 and the block fails: never a commit on one side only.
//! - A Query that names such a table and another table of the primary (not shared) in one
//!   statement, or mixes them in one text, cannot run on one server: refused with 0A000.
//!
//! Prepared writes of such tables are parsed and bound on the primary as the client sent them
//! and refused at their Execute with 0A000 ([`Driver::refuse_execute`]); prepared reads go
//! where the read flags send them. Only the simple protocol runs in step here.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::super::expect::Step;
use super::Driver;
use crate::protocol::messages::{error_response, Severity};
use crate::protocol::wire;
use crate::rules::TableName;
use crate::sql::{injected, Analysis, Kind, TxControl};
use crate::writes::remote::{Lost, Remote};
use crate::writes::twophase::{self, Decision};

/// The SQLSTATE of a statement or transaction that cannot run on two servers.
const UNSUPPORTED: &str = "0A000";
/// pgbridge's statement and portal that refuse a prepared write.
const REFUSED: &str = "pgbridge_refused";
/// The SQLSTATE of a lost connection to the secondary.
const LOST: &str = "08006";

/// A session's side of the secondary on another server.
pub(super) struct Lockstep {
    remote: Remote,
    /// The secondary's transaction block, begun for the client's.
    open: bool,
    /// The block wrote there.
    wrote: bool,
    /// The client's BEGIN and its savepoints open, to begin the secondary's block alike.
    begin: Option<String>,
    savepoints: Vec<String>,
    /// A prepared part to settle once the client's COMMIT is answered: its name and xid.
    prepared: Option<(String, i64)>,
}

impl Lockstep {
    pub(super) fn new(remote: Remote) -> Lockstep {
        Lockstep {
            remote,
            open: false,
            wrote: false,
            begin: None,
            savepoints: Vec::new(),
            prepared: None,
        }
    }

    /// Follows the client's transaction control, for the block to begin alike.
    fn follow(&mut self, ctl: &TxControl, text: &str) {
        match ctl {
            TxControl::Begin(_) => {
                self.begin = Some(text.to_string());
                self.savepoints.clear();
            }
            TxControl::Savepoint(name) => self.savepoints.push(name.clone()),
            TxControl::Release(name) => {
                if let Some(i) = self.savepoints.iter().rposition(|s| s == name) {
                    self.savepoints.truncate(i);
                }
            }
            TxControl::RollbackTo(name) => {
                if let Some(i) = self.savepoints.iter().rposition(|s| s == name) {
                    self.savepoints.truncate(i + 1);
                }
            }
            _ => {
                self.begin = None;
                self.savepoints.clear();
            }
        }
    }

    fn ended(&mut self) {
        self.open = false;
        self.wrote = false;
    }
}

/// Whether a statement names one of `switched`.
fn names(s: &crate::sql::StatementInfo, switched: &std::collections::HashSet<TableName>) -> bool {
    s.reads.iter().any(|t| switched.contains(t))
        || s.writes.iter().any(|w| switched.contains(&w.table))
}

/// The privilege a statement's write of a table needs on the primary.
fn privileges(s: &crate::sql::StatementInfo) -> Vec<&'static str> {
    use crate::sql::classify::WriteOp;
    let mut out = vec!["SELECT"];
    for w in &s.writes {
        out.extend(match w.op {
            WriteOp::Insert | WriteOp::InsertSelect | WriteOp::CopyFrom => &["INSERT"][..],
            WriteOp::Upsert => &["INSERT", "UPDATE"][..],
            WriteOp::Update => &["UPDATE"][..],
            WriteOp::Delete => &["DELETE"][..],
            WriteOp::Merge => &["INSERT", "UPDATE", "DELETE"][..],
            WriteOp::Truncate => &["TRUNCATE"][..],
        });
    }
    out.sort_unstable();
    out.dedup();
    out
}

impl<'a> Driver<'a> {
    /// The switched tables run on another server now, or the session's block there is open.
    fn lockstep_due(&self) -> bool {
        if self
            .lockstep
            .as_ref()
            .is_some_and(|l| l.open || l.prepared.is_some())
        {
            return true;
        }
        self.writes.as_ref().is_some_and(|w| {
            let d = w.flags.load();
            d.remote && !d.switched.is_empty()
        })
    }

    /// A Query with the secondary on another server: true when it was taken care of here
    /// (see the module's doc); false when it goes its usual way.
    pub(super) async fn lockstep<W: AsyncWrite + Unpin>(
        &mut self,
        frame: &[u8],
        primary: &mut W,
    ) -> std::io::Result<bool> {
        if !self.lockstep_due() {
            return Ok(false);
        }
        if frame[0] == b'E' {
            return Ok(self.refuse_execute(frame));
        }
        if frame[0] != b'Q' {
            return Ok(false);
        }
        let Some(text) = wire::query_text(frame) else {
            return Ok(false);
        };
        let analysis = self.analyzer.analyze(text);
        let switched = self
            .writes
            .as_ref()
            .map(|w| w.flags.load().switched.clone())
            .unwrap_or_default();
        if let [s] = analysis.statements.as_slice() {
            if let Kind::Transaction(ctl) = &s.kind {
                let part = text.get(s.text.clone()).unwrap_or(text).to_string();
                return self.lockstep_control(ctl, &part, primary).await;
            }
        }
        if !analysis.statements.iter().any(|s| names(s, &switched)) {
            return self.primary_statement(text, &analysis).await;
        }
        if let Some(why) = self.not_on_one_server(&analysis, &switched) {
            return self.refuse(&why);
        }
        self.on_secondary(text, &analysis, primary).await
    }

    /// The Execute of a prepared write of a switched table: refused with 0A000 in its place
    /// (pgbridge's own statement, parsed and bound unseen, its error the client's).
    fn refuse_execute(&mut self, frame: &[u8]) -> bool {
        let Some(portal) = wire::execute_portal(frame) else {
            return false;
        };
        let Some(analysis) = self.portals.get(portal).cloned() else {
            return false;
        };
        let switched = self
            .writes
            .as_ref()
            .map(|w| w.flags.load().switched.clone())
            .unwrap_or_default();
        let writes = analysis
            .statements
            .iter()
            .flat_map(|s| &s.writes)
            .any(|w| switched.contains(&w.table));
        if !writes {
            return false;
        }
        let why = "pgbridge: prepared writes (the extended protocol) of a table whose writes are \
                   on a secondary of another server are not run there; use the simple protocol, \
                   or a secondary in the primary's own database";
        let hidden = [
            (
                super::Expect::Close { forward: false },
                wire::close(b'P', REFUSED),
            ),
            (
                super::Expect::Close { forward: false },
                wire::close(b'S', REFUSED),
            ),
            (
                super::Expect::Parse { forward: false },
                wire::parse(REFUSED, &injected::raise(UNSUPPORTED, why)),
            ),
            (
                super::Expect::Bind { forward: false },
                wire::bind(REFUSED, REFUSED),
            ),
        ];
        for (expect, bytes) in hidden {
            self.expect(expect);
            self.out.extend_from_slice(&bytes);
        }
        self.expect(super::Expect::Execute {
            step: Step::Pass,
            forward: true,
        });
        self.out.extend_from_slice(&wire::execute(REFUSED));
        true
    }

    /// Why `analysis` cannot run on the secondary alone, if it cannot.
    fn not_on_one_server(
        &self,
        analysis: &Analysis,
        switched: &std::collections::HashSet<TableName>,
    ) -> Option<String> {
        let shared = self.routing.map(|(_, s)| s);
        for s in &analysis.statements {
            if matches!(s.kind, Kind::Transaction(_) | Kind::Session(_)) {
                continue;
            }
            if !names(s, switched) {
                return Some(
                    "pgbridge: this text mixes statements on a table whose writes are on the \
                     secondary (another server) with statements on the primary's tables; send \
                     them as separate queries"
                        .into(),
                );
            }
            let migrated_elsewhere = s
                .reads
                .iter()
                .chain(s.writes.iter().map(|w| &w.table))
                .any(|t| !switched.contains(t));
            let unshared = s
                .others
                .iter()
                .any(|t| !shared.is_some_and(|sh| sh.contains(t)));
            if migrated_elsewhere || unshared || s.may_write {
                return Some(
                    "pgbridge: this statement uses a table whose writes are on the secondary \
                     (another server) together with tables of the primary; one statement cannot \
                     run on two servers"
                        .into(),
                );
            }
        }
        None
    }

    /// A Query on the primary's tables only: while the secondary's block wrote, a write here
    /// makes the transaction span both servers, which needs two-phase commit.
    async fn primary_statement(
        &mut self,
        text: &str,
        analysis: &Analysis,
    ) -> std::io::Result<bool> {
        let wrote_there = self.lockstep.as_ref().is_some_and(|l| l.open && l.wrote);
        if !wrote_there || !(analysis.may_write() || crate::writes::mixed::starts_with_write(text))
        {
            return Ok(false);
        }
        match self.two_phase().await {
            Ok(true) => Ok(false),
            Ok(false) => self.refuse(&no_two_phase()),
            Err(Lost(why)) => self.lost_in_block(&why).await,
        }
    }

    /// Whether the secondary can prepare transactions.
    async fn two_phase(&mut self) -> Result<bool, Lost> {
        self.lockstep_mut().remote.two_phase().await
    }

    fn lockstep_mut(&mut self) -> &mut Lockstep {
        if self.lockstep.is_none() {
            let (url, startup) = self
                .writes
                .as_ref()
                .map(|w| (w.secondary.clone(), w.startup.clone()))
                .unwrap_or_default();
            let url = url.expect("writes on a secondary have one");
            self.lockstep = Some(Lockstep::new(Remote::new(url, startup)));
        }
        self.lockstep.as_mut().expect("made above")
    }

    /// Runs `text` (statements on switched tables only) on the secondary.
    async fn on_secondary<W: AsyncWrite + Unpin>(
        &mut self,
        text: &str,
        analysis: &Analysis,
        primary: &mut W,
    ) -> std::io::Result<bool> {
        self.drain(primary).await?;
        let status = self.shared.lock().status;
        if status == b'E' {
            // The primary answers 25P02 itself, as it would have.
            return Ok(false);
        }
        if !self.may_write_there(analysis).await {
            let why = "pgbridge: permission denied: the session's user lacks a privilege on the \
                       table (as the primary says) that this statement needs";
            return Ok(self.refuse_with("42501", why));
        }
        let written = super::switched::written(analysis);
        self.admit(&written).await;
        let Some(sql) = self.switched_text(text, analysis, false).await else {
            return Ok(false);
        };
        let controls = analysis
            .statements
            .iter()
            .any(|s| matches!(s.kind, Kind::Transaction(_)));
        if status == b'T' {
            if controls {
                let why = "pgbridge: inside a transaction block, send transaction control as a \
                           query of its own when the text names a table whose writes are on \
                           the secondary (another server)";
                return self.refuse(why);
            }
            if let Err(Lost(why)) = self.open_block().await {
                return self.lost_in_block(&why).await;
            }
            let primary_wrote = {
                let t = self.shared.lock();
                t.other_write || !t.txn.is_empty()
            };
            if !written.is_empty() && primary_wrote {
                match self.two_phase().await {
                    Ok(true) => {}
                    Ok(false) => return self.refuse(&no_two_phase()),
                    Err(Lost(why)) => return self.lost_in_block(&why).await,
                }
            }
        }
        let settings = self.settings_script();
        let reply = self.lockstep_mut().remote.query(&sql, &settings).await;
        let reply = match reply {
            Ok(r) => r,
            Err(Lost(why)) if status == b'T' => {
                return self.lost_in_block(&why).await;
            }
            Err(Lost(why)) if written.is_empty() => {
                let e = error_response(Severity::Error, LOST, &lost_message(&why));
                self.queue_served(e, true);
                return Ok(true);
            }
            // Whether the write took effect is not known: the session ends, as a lost
            // connection to the database itself would end it.
            Err(Lost(why)) => return Err(std::io::Error::other(lost_message(&why))),
        };
        if status == b'T' {
            if let Some((code, message, _)) = &reply.error {
                // The primary's part fails too, with pgbridge's own statement (its reply kept
                // from the client, which gets the secondary's error).
                let raise = injected::raise(code, message);
                self.held_query(&raise, vec![Step::Hidden], primary).await?;
            } else if !written.is_empty() {
                self.lockstep_mut().wrote = true;
            }
        } else if reply.status == b'T' {
            // The text began a block of its own there: the primary's follows.
            self.held_query(injected::BEGIN, vec![Step::Hidden], primary)
                .await?;
            let l = self.lockstep_mut();
            l.open = true;
            l.wrote = !written.is_empty();
        }
        self.queue_served(reply.frames, true);
        let mut t = self.shared.lock();
        if t.status == b'I' {
            // Done there: the session writes nothing now, for the write switch.
            let pushed = t.pushed;
            t.active.idle(pushed);
        }
        Ok(true)
    }

    /// Whether the session's user holds, on the primary, the privileges the statements need.
    async fn may_write_there(&mut self, analysis: &Analysis) -> bool {
        let Some(serving) = self.serving.as_ref() else {
            return false;
        };
        let access = serving.server.options().access.clone();
        let user = serving.user.clone();
        for s in &analysis.statements {
            let tables: Vec<&TableName> = s
                .reads
                .iter()
                .chain(s.writes.iter().map(|w| &w.table))
                .collect();
            if tables.is_empty() {
                continue;
            }
            for privilege in privileges(s) {
                if !access.may(&user, &tables, privilege).await {
                    return false;
                }
            }
        }
        true
    }

    /// Begins the secondary's block as the client's began, when it is not open yet.
    async fn open_block(&mut self) -> Result<(), Lost> {
        let l = self.lockstep_mut();
        if l.open {
            return Ok(());
        }
        let mut script = l
            .begin
            .clone()
            .unwrap_or_else(|| injected::BEGIN.to_string());
        for s in &l.savepoints {
            script.push_str(&format!(";\nSAVEPOINT {}", crate::rules::quote_ident(s)));
        }
        if let Err(e) = l.remote.statement(&script).await? {
            tracing::warn!(error = %e, "cannot begin the block on the secondary");
        }
        l.open = true;
        l.wrote = false;
        Ok(())
    }

    /// The client's transaction control while the switched tables run on another server.
    async fn lockstep_control<W: AsyncWrite + Unpin>(
        &mut self,
        ctl: &TxControl,
        text: &str,
        primary: &mut W,
    ) -> std::io::Result<bool> {
        let open = self.lockstep.as_ref().is_some_and(|l| l.open);
        if let Some(l) = self.lockstep.as_mut() {
            l.follow(ctl, text);
        }
        if !open {
            return Ok(false);
        }
        match ctl {
            TxControl::Commit => self.lockstep_commit(primary).await,
            TxControl::Rollback => {
                self.end_remote(injected::ROLLBACK).await;
                Ok(false)
            }
            TxControl::Savepoint(_) | TxControl::Release(_) | TxControl::RollbackTo(_) => {
                // The primary answers; the secondary follows (its error, if any, is the
                // primary's too: the same savepoints are open on both).
                match self.lockstep_mut().remote.statement(text).await {
                    Ok(_) => Ok(false),
                    Err(Lost(why)) => self.lost_in_block(&why).await,
                }
            }
            TxControl::Begin(_) => Ok(false),
            TxControl::PrepareTransaction(_)
            | TxControl::CommitPrepared(_)
            | TxControl::RollbackPrepared(_) => {
                let why = "pgbridge: this transaction wrote a table whose writes are on the \
                           secondary (another server); pgbridge commits it in two phases itself";
                self.refuse(why)
            }
        }
    }

    /// Ends the secondary's block with `sql`, whatever becomes of it (a lost connection ends it
    /// too).
    async fn end_remote(&mut self, sql: &str) {
        let l = self.lockstep_mut();
        if let Ok(Err(e)) = l.remote.statement(sql).await {
            tracing::debug!(error = %e, "ending the block on the secondary");
        }
        l.ended();
    }

    /// The client's COMMIT of a block open on the secondary.
    async fn lockstep_commit<W: AsyncWrite + Unpin>(
        &mut self,
        primary: &mut W,
    ) -> std::io::Result<bool> {
        self.drain(primary).await?;
        let (status, primary_wrote) = {
            let t = self.shared.lock();
            (t.status, t.other_write || !t.txn.is_empty())
        };
        let wrote = self.lockstep.as_ref().is_some_and(|l| l.wrote);
        if status != b'T' || !wrote {
            // Failed (the primary answers ROLLBACK), or read only there.
            let end = if status == b'T' {
                injected::COMMIT
            } else {
                injected::ROLLBACK
            };
            self.end_remote(end).await;
            return Ok(false);
        }
        if !primary_wrote {
            let committed = self.lockstep_mut().remote.query(injected::COMMIT, "").await;
            self.lockstep_mut().ended();
            return match committed {
                Ok(r) if r.error.is_none() => Ok(false),
                Ok(r) => {
                    self.held_query(injected::ROLLBACK, vec![Step::Hidden], primary)
                        .await?;
                    self.queue_served(r.frames, true);
                    Ok(true)
                }
                Err(Lost(why)) => Err(std::io::Error::other(lost_message(&why))),
            };
        }
        if self.shared.lock().xid.is_none() {
            self.held_query(injected::XID, vec![Step::Xid], primary)
                .await?;
        }
        let Some(xid) = self.shared.lock().xid else {
            self.end_remote(injected::ROLLBACK).await;
            let why = "pgbridge: the primary gave no transaction id to commit in two phases by";
            return Ok(self.refuse_with("XX000", why));
        };
        let gid = twophase::gid(xid, self.session);
        let prepare = format!("PREPARE TRANSACTION {}", crate::rules::quote_literal(&gid));
        let prepared = self.lockstep_mut().remote.query(&prepare, "").await;
        self.lockstep_mut().ended();
        match prepared {
            Ok(r) if r.error.is_none() => {
                self.lockstep_mut().prepared = Some((gid, xid));
                Ok(false)
            }
            Ok(r) => {
                self.held_query(injected::ROLLBACK, vec![Step::Hidden], primary)
                    .await?;
                self.queue_served(r.frames, true);
                Ok(true)
            }
            // Prepared or not, the primary's part rolls back: a part prepared there is rolled
            // back by the settling of orphans.
            Err(Lost(why)) => {
                self.held_query(injected::ROLLBACK, vec![Step::Hidden], primary)
                    .await?;
                let e = error_response(Severity::Error, LOST, &lost_message(&why));
                self.queue_served(e, true);
                Ok(true)
            }
        }
    }

    /// After the client's COMMIT of a block prepared on the secondary went to the primary:
    /// once it is answered, the prepared part follows the primary's outcome.
    pub(super) async fn settle_prepared<W: AsyncWrite + Unpin>(
        &mut self,
        primary: &mut W,
    ) -> std::io::Result<()> {
        let Some((gid, xid)) = self.lockstep.as_mut().and_then(|l| l.prepared.take()) else {
            return Ok(());
        };
        self.drain(primary).await?;
        primary.flush().await?;
        let status = match self.serving.as_ref() {
            Some(s) => s.server.options().access.clone().xact_status(xid).await,
            None => None,
        };
        let decision = Decision::of(status.as_deref());
        let Some(sql) = decision.statement(&gid) else {
            tracing::warn!(
                gid,
                ?status,
                "the primary's outcome is not known yet: the prepared part is left to be settled"
            );
            return Ok(());
        };
        match self.lockstep_mut().remote.statement(&sql).await {
            Ok(Ok(_)) => twophase::count(decision, "session"),
            Ok(Err(e)) => tracing::warn!(gid, error = %e, "cannot settle the prepared part"),
            Err(Lost(e)) => tracing::warn!(gid, error = %e, "cannot settle the prepared part"),
        }
        Ok(())
    }

    /// The connection to the secondary was lost inside the client's block: the block fails on
    /// both sides with 08006 (the client gets the error from the primary).
    async fn lost_in_block(&mut self, why: &str) -> std::io::Result<bool> {
        if self.lockstep.as_ref().is_some_and(|l| l.open) {
            self.end_remote(injected::ROLLBACK).await;
        }
        Ok(self.refuse_with(LOST, &lost_message(why)))
    }

    /// The client's Query fails with 0A000 and `why` on the primary: in a block, the block
    /// fails, as it would with any error.
    fn refuse(&mut self, why: &str) -> std::io::Result<bool> {
        Ok(self.refuse_with(UNSUPPORTED, why))
    }

    /// The client's Query fails with `code` and `why`, in its place on the primary.
    fn refuse_with(&mut self, code: &str, why: &str) -> bool {
        self.expect(super::Expect::Query {
            steps: Default::default(),
            hold: false,
        });
        self.out
            .extend_from_slice(&wire::query(&injected::raise(code, why)));
        true
    }
}

fn no_two_phase() -> String {
    "pgbridge: this transaction would write both a table whose writes are on the secondary \
     (another server) and tables of the primary, and the secondary cannot prepare transactions \
     (max_prepared_transactions = 0): it cannot commit on both atomically"
        .to_string()
}

fn lost_message(why: &str) -> String {
    format!("pgbridge: the connection to the secondary was lost: {why}")
}
