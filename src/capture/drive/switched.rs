//! The driver's half of the write switch (src/writes/mod.rs): statements on a table whose
//! writes are on the secondary go to its write view, and writes wait while a switch holds
//! their table.
//!
//! Before each request frame reaches the handlers:
//!
//! - a Query or Parse whose statements name a switched table is rewritten to its write view
//!   (`src/sql/write_rewrite.rs`); the handlers then see a text that names no migrated table,
//!   and relay it in the client's own session: the target is in the primary's database, so
//!   the client's transaction covers it as it covers everything else;
//! - a Query, or the Execute of a portal, that writes a migrated table counts the session in
//!   as writing it ([`crate::writes::Active`]), waiting first while a switch holds the table;
//! - a Bind of a statement parsed while the table's writes went the other way prepares it
//!   again first (pgbridge's own Close and Parse, their replies kept from the client), so a
//!   statement prepared before a switch runs where the table's writes go now.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use super::Driver;
use crate::capture::expect::Expect;
use crate::protocol::wire;
use crate::rules::TableName;
use crate::sql::Analysis;
use crate::writes::WriteFlags;

/// What a session needs for the write switch.
pub struct WriteRouting {
    pub flags: Arc<WriteFlags>,
    pub rules: Arc<arc_swap::ArcSwap<crate::rules::RuleSet>>,
    /// Where the sibling views of upserts are created.
    pub secondary: Option<crate::config::PgUrl>,
    /// The client's startup settings, for a connection of the session's own to a secondary on
    /// another server (src/capture/drive/lockstep.rs).
    pub startup: Vec<(String, String)>,
}

/// A statement the client prepared that names a migrated table.
pub(super) struct Prepared {
    text: Arc<str>,
    types: Vec<u32>,
    /// The write directions' version it was prepared under.
    version: u64,
    /// The migrated tables it writes.
    pub(super) writes: Vec<TableName>,
}

/// The migrated tables `analysis` writes.
pub(super) fn written(analysis: &Analysis) -> Vec<TableName> {
    let mut out: Vec<TableName> = Vec::new();
    for w in analysis.statements.iter().flat_map(|s| &s.writes) {
        if !out.contains(&w.table) {
            out.push(w.table.clone());
        }
    }
    out
}

/// Whether a statement of `text` writes a table no rule migrates.
fn writes_other_tables(text: &str, analysis: &Analysis) -> bool {
    analysis.statements.iter().any(|s| {
        s.writes.is_empty()
            && text
                .get(s.text.clone())
                .is_some_and(crate::writes::mixed::starts_with_write)
    })
}

impl<'a> Driver<'a> {
    /// Statements on tables whose writes are on the secondary go to their write views.
    pub fn with_writes(mut self, routing: WriteRouting) -> Self {
        self.shared.lock().active = crate::writes::Active::new(routing.flags.clone());
        self.writes = Some(routing);
        self
    }

    /// The frame to handle instead of `frame`, if any (see the module's doc).
    pub(super) async fn redirect(&mut self, frame: &[u8]) -> Option<Bytes> {
        self.writes.as_ref()?;
        match frame[0] {
            b'Q' => {
                let text = wire::query_text(frame)?;
                let analysis = self.analyzer.analyze(text);
                if analysis.is_unrelated() {
                    self.note_other_write(crate::writes::mixed::starts_with_write(text));
                    return None;
                }
                self.note_other_write(writes_other_tables(text, &analysis));
                self.admit(&written(&analysis)).await;
                let new = self.switched_text(text, &analysis, false).await?;
                Some(wire::query(&new))
            }
            b'P' => self.redirect_parse(frame).await,
            b'B' => {
                self.reprepare_if_moved(frame).await;
                if let Some((portal, stmt)) = wire::bind_names(frame) {
                    if self.prepared.contains_key(stmt) {
                        let bind = Bytes::copy_from_slice(frame);
                        self.bound.insert(portal.to_string(), bind);
                    }
                }
                None
            }
            b'E' => {
                let portal = wire::execute_portal(frame)?.to_string();
                let stmt = self.portal_statements.get(&portal)?.clone();
                self.note_other_write(self.other_writes.contains(&stmt));
                let tables = self.prepared.get(&stmt)?.writes.clone();
                self.admit(&tables).await;
                self.rebind_if_moved(&portal).await;
                None
            }
            _ => None,
        }
    }

    /// The session writes a table no rule migrates in its open transaction (if `wrote`).
    fn note_other_write(&self, wrote: bool) {
        if wrote {
            self.shared.lock().other_write = true;
        }
    }

    async fn redirect_parse(&mut self, frame: &[u8]) -> Option<Bytes> {
        let (name, text, _) = wire::parse_message(frame)?;
        let analysis = self.analyzer.analyze(text);
        if analysis.is_unrelated() {
            self.prepared.remove(name);
            match crate::writes::mixed::starts_with_write(text) {
                true => self.other_writes.insert(name.to_string()),
                false => self.other_writes.remove(name),
            };
            return None;
        }
        self.other_writes.remove(name);
        let version = self.writes.as_ref()?.flags.load().version;
        let prepared = Prepared {
            text: Arc::from(text),
            types: wire::parse_param_types(frame),
            version,
            writes: written(&analysis),
        };
        self.prepared.insert(name.to_string(), prepared);
        let new = self.switched_text(text, &analysis, true).await?;
        wire::replace_parse_query(frame, &new)
    }

    /// Prepares the Bind's statement again when the write directions changed since it was.
    async fn reprepare_if_moved(&mut self, frame: &[u8]) {
        let Some((_, stmt)) = wire::bind_names(frame) else {
            return;
        };
        let Some(version) = self.writes.as_ref().map(|w| w.flags.load().version) else {
            return;
        };
        let Some(p) = self.prepared.get(stmt) else {
            return;
        };
        if p.version == version {
            return;
        }
        tracing::debug!(
            session = self.session,
            statement = stmt,
            "prepared again after a write switch"
        );
        let parse = wire::parse_typed(stmt, &p.text.clone(), &p.types.clone());
        if !stmt.is_empty() {
            self.expect(Expect::Close { forward: false });
            self.out.extend_from_slice(&wire::close(b'S', stmt));
        }
        let parse = self.redirect_parse(&parse).await.unwrap_or(parse);
        self.hidden_parse = true;
        self.parse(&parse);
        self.hidden_parse = false;
    }

    /// A portal bound before a switch that flipped while its Execute waited: its statement is
    /// prepared again and the client's Bind sent again (their replies kept from the client),
    /// so that the Execute runs where the table's writes go now.
    async fn rebind_if_moved(&mut self, portal: &str) {
        let Some(bind) = self.bound.get(portal).cloned() else {
            return;
        };
        let before = self.out.len();
        self.reprepare_if_moved(&bind).await;
        if self.out.len() == before {
            return;
        }
        self.hidden_bind = true;
        self.bind(&bind);
        self.hidden_bind = false;
    }

    /// Counts the session in as writing `tables`, waiting while a switch holds one of them.
    pub(super) async fn admit(&mut self, tables: &[TableName]) {
        if tables.is_empty() {
            return;
        }
        let Some(flags) = self.writes.as_ref().map(|w| w.flags.clone()) else {
            return;
        };
        loop {
            let held = {
                let mut t = self.shared.lock();
                let pushed = t.pushed;
                t.active.try_admit(tables, pushed)
            };
            match held {
                None => return,
                Some(table) => flags.wait_unheld(&[table]).await,
            }
        }
    }

    /// `text` with its statements on switched tables pointed at their write views; `None` when
    /// it names none.
    pub(super) async fn switched_text(
        &mut self,
        text: &str,
        analysis: &Analysis,
        prepared: bool,
    ) -> Option<String> {
        let routing = self.writes.as_ref()?;
        let directions = routing.flags.load();
        if directions.switched.is_empty() {
            return None;
        }
        let switched: &HashSet<TableName> = &directions.switched;
        let ranges: Vec<_> = analysis
            .statements
            .iter()
            .filter(|s| {
                s.reads.iter().any(|t| switched.contains(t))
                    || s.writes.iter().any(|w| switched.contains(&w.table))
            })
            .map(|s| s.text.clone())
            .collect();
        if ranges.is_empty() {
            return None;
        }
        if directions.remote && prepared {
            // Parsed on the primary as it is (the legacy table's types); a write among its
            // statements is refused at its Execute (src/capture/drive/lockstep.rs).
            return None;
        }
        let rules = routing.rules.load_full();
        let (sql, modes) = crate::sql::write_rewrite::rewrite_text(text, &ranges, &rules, switched);
        for (table, mode) in modes {
            let (Some(rule), Some(url)) = (rules.get(&table), routing.secondary.as_ref()) else {
                continue;
            };
            if let Err(e) = crate::writes::install::ensure_mode(url, rule, &mode).await {
                tracing::warn!(session = self.session, table = %table, error = %e, "cannot create the write view of an upsert");
            }
        }
        Some(sql)
    }
}
