//! Where the writes of each migrated table are executed: the write switch.
//!
//! [`WriteFlags`] holds each source table's [`Direction`]: `primary` (the start: the legacy
//! table is the authority, its committed writes are mirrored forward), `secondary` (the target
//! is the authority: the application's statements on the table are pointed at its write view,
//! `src/sql/write_view.rs`, and the target's committed changes are mirrored back into the
//! legacy table, `src/mirror/reverse/`), or `complete` (as `secondary`, with the reverse mirror
//! stopped because operators retired the legacy table). The direction is durable
//! ([`persist`]): a restarted pgbridge comes back where it was, never silently on the primary.
//!
//! Sessions read the flags on every statement without locking (an `ArcSwap` snapshot). Two
//! more things are shared with them for the switch ([`switch`]):
//!
//! - **activity**: how many sessions have an open transaction (or a statement in flight) that
//!   wrote each table; a session counts itself in at its first write of a table and out at
//!   its next idle ReadyForQuery ([`Active`]);
//! - **the hold**: while a table switches, a session's new write of it waits
//!   ([`WriteFlags::wait_unheld`]), unless the session's open transaction already wrote it (it
//!   must be able to finish: the switch waits for it).
//!
//! [`gate`] is the switch's evidence and refusals.

pub mod audit;
pub mod gate;
pub mod install;
pub mod mixed;
pub mod persist;
pub mod remote;
pub mod switch;
pub mod twophase;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::rules::TableName;

/// Where a table's writes are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Primary,
    Secondary,
    /// On the secondary, the reverse mirror stopped: the legacy table is retired.
    Complete,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Primary => "primary",
            Direction::Secondary => "secondary",
            Direction::Complete => "complete",
        }
    }

    pub fn parse(word: &str) -> Option<Direction> {
        match word {
            "primary" => Some(Direction::Primary),
            "secondary" => Some(Direction::Secondary),
            "complete" => Some(Direction::Complete),
            _ => None,
        }
    }

    /// The application's writes are executed on the target.
    pub fn on_secondary(self) -> bool {
        self != Direction::Primary
    }
}

/// One immutable state of every table's write direction.
#[derive(Debug, Default)]
pub struct Directions {
    pub tables: BTreeMap<TableName, Direction>,
    /// The tables whose statements go to their write views.
    pub switched: HashSet<TableName>,
    /// Goes up on every change: statements prepared under an older one are prepared again.
    pub version: u64,
    /// The targets are on another server than the primary's database: statements on switched
    /// tables run on a connection of the session's own there, in step with its transaction
    /// (src/capture/drive/lockstep.rs), not in its own session.
    pub remote: bool,
}

impl Directions {
    fn new(tables: BTreeMap<TableName, Direction>, version: u64, remote: bool) -> Directions {
        let switched = tables
            .iter()
            .filter(|(_, d)| d.on_secondary())
            .map(|(t, _)| t.clone())
            .collect();
        Directions {
            tables,
            switched,
            version,
            remote,
        }
    }

    pub fn get(&self, table: &TableName) -> Direction {
        self.tables.get(table).copied().unwrap_or_default()
    }
}

/// Each table's write direction, the sessions writing each table, and the hold of a switch.
pub struct WriteFlags {
    current: ArcSwap<Directions>,
    /// Tables whose new writes wait, with how many switches hold each.
    held: Mutex<HashMap<TableName, usize>>,
    released: Notify,
    active: Mutex<HashMap<TableName, usize>>,
    idle: Notify,
    /// Where the directions are kept; `None`: in memory only (tests).
    path: Option<PathBuf>,
    /// One switch at a time.
    pub(crate) switching: tokio::sync::Mutex<()>,
}

impl WriteFlags {
    /// The directions kept at `path` (every table `primary` when there is no file yet).
    pub fn open(path: Option<PathBuf>) -> Result<Arc<WriteFlags>, persist::PersistError> {
        let (tables, remote) = match &path {
            Some(p) => persist::load(p)?,
            None => (BTreeMap::new(), false),
        };
        Ok(Arc::new(WriteFlags {
            current: ArcSwap::from_pointee(Directions::new(tables, 1, remote)),
            held: Mutex::default(),
            released: Notify::new(),
            active: Mutex::default(),
            idle: Notify::new(),
            path,
            switching: tokio::sync::Mutex::new(()),
        }))
    }

    /// The directions now.
    pub fn load(&self) -> Arc<Directions> {
        self.current.load_full()
    }

    /// Whether any table's writes are away from the primary, or held (the sessions' fast path).
    pub fn quiet(&self) -> bool {
        self.current.load().switched.is_empty() && lock(&self.held).is_empty()
    }

    /// Makes `table`'s direction `to`, durably first; `remote`: whether the target is on
    /// another server (unchanged when `None`).
    pub(crate) fn set(
        &self,
        table: &TableName,
        to: Direction,
        remote: Option<bool>,
    ) -> Result<(), persist::PersistError> {
        let old = self.current.load_full();
        let mut tables = old.tables.clone();
        if to == Direction::Primary {
            tables.remove(table);
        } else {
            tables.insert(table.clone(), to);
        }
        let remote = remote.unwrap_or(old.remote);
        if let Some(p) = &self.path {
            persist::save(p, &tables, remote)?;
        }
        self.current
            .store(Arc::new(Directions::new(tables, old.version + 1, remote)));
        Ok(())
    }

    /// Whether new writes of `table` wait now.
    pub fn is_held(&self, table: &TableName) -> bool {
        lock(&self.held).contains_key(table)
    }

    pub(crate) fn hold(&self, table: &TableName) {
        *lock(&self.held).entry(table.clone()).or_default() += 1;
    }

    pub(crate) fn release(&self, table: &TableName) {
        let mut held = lock(&self.held);
        if let Some(n) = held.get_mut(table) {
            *n -= 1;
            if *n == 0 {
                held.remove(table);
            }
        }
        drop(held);
        self.released.notify_waiters();
    }

    /// Waits while any of `tables` is held.
    pub async fn wait_unheld(&self, tables: &[TableName]) {
        loop {
            let released = self.released.notified();
            if !tables.iter().any(|t| self.is_held(t)) {
                return;
            }
            released.await;
        }
    }

    /// How many sessions are in a transaction that wrote `table`.
    pub fn active(&self, table: &TableName) -> usize {
        lock(&self.active).get(table).copied().unwrap_or(0)
    }

    /// Waits until no session is in a transaction that wrote `table`; false after `timeout`.
    pub(crate) async fn wait_inactive(
        &self,
        table: &TableName,
        timeout: std::time::Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.idle.notified();
            if self.active(table) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.active(table) == 0;
            }
        }
    }

    fn enter(&self, table: &TableName) {
        *lock(&self.active).entry(table.clone()).or_default() += 1;
    }

    fn leave(&self, table: &TableName) {
        let mut active = lock(&self.active);
        if let Some(n) = active.get_mut(table) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                active.remove(table);
            }
        }
        drop(active);
        self.idle.notify_waiters();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tables one session's open transaction wrote, counted in [`WriteFlags`]' activity until
/// the session is idle again (or gone). Each is kept with the number of requests the session
/// had queued when it was counted in (`at`): the ReadyForQuery that ends the count must come
/// after the request that wrote, not before it was even queued.
#[derive(Default)]
pub struct Active {
    flags: Option<Arc<WriteFlags>>,
    tables: Vec<(TableName, u64)>,
}

impl Active {
    pub fn new(flags: Arc<WriteFlags>) -> Active {
        Active {
            flags: Some(flags),
            tables: Vec::new(),
        }
    }

    /// Whether the open transaction wrote `table`.
    pub fn wrote(&self, table: &TableName) -> bool {
        self.tables.iter().any(|(t, _)| t == table)
    }

    /// The session is about to write `tables`, its next request the one after `at` queued
    /// requests: each is counted in, unless a switch holds one the open transaction has not
    /// written yet, which is returned (counted out again) for the session to wait on
    /// ([`WriteFlags::wait_unheld`]) before it tries again. It counts itself in before it
    /// looks at the hold, and a switch holds before it counts the sessions in, so one of the
    /// two always sees the other.
    pub fn try_admit(&mut self, tables: &[TableName], at: u64) -> Option<TableName> {
        let flags = self.flags.clone()?;
        for t in tables {
            if let Some(entry) = self.tables.iter_mut().find(|(x, _)| x == t) {
                entry.1 = entry.1.max(at);
                continue;
            }
            flags.enter(t);
            if flags.is_held(t) {
                flags.leave(t);
                return Some(t.clone());
            }
            self.tables.push((t.clone(), at));
        }
        None
    }

    /// The session is idle after its first `answered` requests: its transaction ended, and so
    /// did the writes counted in before those requests were queued.
    pub fn idle(&mut self, answered: u64) {
        let Some(flags) = &self.flags else { return };
        self.tables.retain(|(t, at)| {
            let done = *at < answered;
            if done {
                flags.leave(t);
            }
            !done
        });
    }

    fn leave_all(&mut self) {
        if let Some(flags) = &self.flags {
            for (t, _) in self.tables.drain(..) {
                flags.leave(&t);
            }
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.leave_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(name: &str) -> TableName {
        TableName::new("public", name)
    }

    #[tokio::test]
    async fn a_switch_waits_for_the_sessions_writing_the_table_and_a_held_write_for_the_release() {
        let flags = WriteFlags::open(None).unwrap();
        let mut session = Active::new(flags.clone());
        assert!(session.try_admit(&[t("bars")], 0).is_none());
        assert!(session.try_admit(&[t("bars")], 1).is_none());
        assert_eq!(flags.active(&t("bars")), 1);
        // The ReadyForQuery of a request queued before the second write does not end it.
        session.idle(1);
        assert_eq!(flags.active(&t("bars")), 1);
        assert!(
            !flags
                .wait_inactive(&t("bars"), Duration::from_millis(20))
                .await
        );
        let waiter = {
            let flags = flags.clone();
            tokio::spawn(async move {
                flags
                    .wait_inactive(&t("bars"), Duration::from_secs(5))
                    .await
            })
        };
        session.idle(2);
        assert!(waiter.await.unwrap());

        flags.hold(&t("bars"));
        assert!(!flags.quiet());
        // A session that has not written the table is turned away while it is held.
        assert_eq!(session.try_admit(&[t("bars")], 3), Some(t("bars")));
        assert_eq!(flags.active(&t("bars")), 0);
        let held = {
            let flags = flags.clone();
            tokio::spawn(async move { flags.wait_unheld(&[t("bars")]).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!held.is_finished());
        flags.release(&t("bars"));
        held.await.unwrap();
        assert!(flags.quiet());
    }

    #[test]
    fn a_dropped_session_leaves_and_the_direction_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writes.json");
        let flags = WriteFlags::open(Some(path.clone())).unwrap();
        {
            let mut s = Active::new(flags.clone());
            assert!(s.try_admit(&[t("bars")], 0).is_none());
        }
        assert_eq!(flags.active(&t("bars")), 0);
        flags.set(&t("bars"), Direction::Secondary, None).unwrap();
        let again = WriteFlags::open(Some(path)).unwrap();
        assert_eq!(again.load().get(&t("bars")), Direction::Secondary);
        assert!(again.load().switched.contains(&t("bars")));
        assert_eq!(again.load().get(&t("other")), Direction::Primary);
    }
}
