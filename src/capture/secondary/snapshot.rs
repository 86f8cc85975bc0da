//! A transaction block that keeps one snapshot (REPEATABLE READ, SERIALIZABLE) sees the
//! primary as of its first statement; a read answered by the secondary (or compared there in
//! shadow) would see another moment. So the reads of such a block stay on the primary, and
//! only those of blocks known to take a snapshot per statement go elsewhere. The level is the
//! one the block named (`BEGIN ISOLATION LEVEL`, `SET TRANSACTION`), else the session's default
//! (its `SET`s, its startup packet), else the default the primary gives the session's user in
//! its database, which pgbridge asks the primary for (`reads/secondary/access.rs`).

use crate::capture::drive::Driver;
use crate::sql::isolation::{named_level, set_value, Isolation};

/// The isolation level of a session's open transaction block, as the session says it.
enum BlockLevel {
    /// No transaction block is open: each statement is a transaction of its own.
    Outside,
    Named(Isolation),
    /// The default for the session's user and database, on the primary.
    Default,
}

impl<'a> Driver<'a> {
    fn block_level(&self) -> BlockLevel {
        let t = self.shared.lock();
        if t.status != b'T' && !self.began {
            return BlockLevel::Outside;
        }
        if let Some(level) = t.txn_isolation {
            return BlockLevel::Named(level);
        }
        if let Some(stmt) = t.sets.statement("default_transaction_isolation") {
            // `SET ... TO DEFAULT`: back to the user's and database's.
            return match set_value(&stmt).or_else(|| named_level(&stmt)) {
                Some(level) => BlockLevel::Named(level),
                None => BlockLevel::Default,
            };
        }
        match self.serving.as_ref().and_then(|s| s.startup_level) {
            Some(level) => BlockLevel::Named(level),
            None => BlockLevel::Default,
        }
    }

    /// Whether the open transaction (if any) lets its reads be answered by the secondary, as
    /// far as known without asking the primary (`None`: the primary must be asked).
    pub(in crate::capture) fn snapshot_allows_known(&self) -> Option<bool> {
        match self.block_level() {
            BlockLevel::Outside => Some(true),
            BlockLevel::Named(level) => Some(level.snapshot_per_statement()),
            BlockLevel::Default => {
                let s = self.serving.as_ref()?;
                let known = s
                    .server
                    .options()
                    .access
                    .known_default_level(&s.user, &s.database)?;
                Some(known.is_some_and(Isolation::snapshot_per_statement))
            }
        }
    }

    /// Whether the open transaction (if any) lets its reads be answered by the secondary,
    /// asking the primary for the session's default level when needed.
    pub(in crate::capture) async fn snapshot_allows(&mut self) -> bool {
        if let Some(known) = self.snapshot_allows_known() {
            return known;
        }
        let Some(s) = self.serving.as_ref() else {
            return false;
        };
        let access = s.server.options().access.clone();
        let level = access.default_level(&s.user, &s.database).await;
        level.is_some_and(Isolation::snapshot_per_statement)
    }

    /// Has the primary asked, in the background, for the default level that a later read of
    /// this session's transaction blocks needs (a shadow read does not wait for it).
    pub(in crate::capture) fn learn_default_level(&self) {
        let Some(s) = self.serving.as_ref() else {
            return;
        };
        let access = s.server.options().access.clone();
        let (user, database) = (s.user.clone(), s.database.clone());
        tokio::spawn(async move {
            access.default_level(&user, &database).await;
        });
    }
}
