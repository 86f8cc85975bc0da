//! The session's own settings (its `SET`s), as its session on the primary has them now, for the
//! session's reads on the secondary.
//!
//! `SET` is transactional: one made in a transaction holds only once the transaction commits,
//! goes with a ROLLBACK (or an error that ends the transaction, the implicit one of a Query
//! with several statements included) and with a ROLLBACK TO a savepoint set before it. So a SET
//! that completed joins the open transaction's changes, and those become the session's when a
//! ReadyForQuery says the transaction ended well.

use crate::sql::{SessionOp, SetKind};

/// A change of the open transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `SET name ...`, its statement.
    Set(String, String),
    /// `RESET name`; `None` for `RESET ALL` and `DISCARD ALL`.
    Reset(Option<String>),
    Savepoint(String),
}

/// The session's settings: those of committed work, and the open transaction's changes.
#[derive(Debug, Default)]
pub struct SessionSets {
    /// (setting, the `SET` statement), in the order they were made.
    committed: Vec<(String, String)>,
    open: Vec<Entry>,
    /// An error came in the open transaction: it ends in a rollback.
    failed: bool,
}

impl SessionSets {
    /// A `SET`, `RESET` or `DISCARD` (`stmt`, its text) completed without error.
    pub fn completed(&mut self, op: &SessionOp, stmt: &str) {
        let entry = match op {
            SessionOp::Set(SetKind::Setting(name)) => Entry::Set(name.clone(), stmt.to_string()),
            SessionOp::Reset(name) => Entry::Reset(name.clone()),
            SessionOp::Discard { all: true } => Entry::Reset(None),
            _ => return,
        };
        self.open.push(entry);
    }

    /// `SAVEPOINT name` completed.
    pub fn savepoint(&mut self, name: &str) {
        self.open.push(Entry::Savepoint(name.to_string()));
    }

    /// `ROLLBACK TO SAVEPOINT name` completed: what was set since goes, and the transaction
    /// is whole again.
    pub fn rollback_to(&mut self, name: &str) {
        let at = self
            .open
            .iter()
            .rposition(|e| matches!(e, Entry::Savepoint(n) if n.eq_ignore_ascii_case(name)));
        if let Some(i) = at {
            self.open.truncate(i + 1);
            self.failed = false;
        }
    }

    /// `RELEASE SAVEPOINT name` completed: the changes stay.
    pub fn release(&mut self, name: &str) {
        let at = self
            .open
            .iter()
            .rposition(|e| matches!(e, Entry::Savepoint(n) if n.eq_ignore_ascii_case(name)));
        if let Some(i) = at {
            self.open.remove(i);
        }
    }

    /// A ROLLBACK completed.
    pub fn rollback(&mut self) {
        self.open.clear();
        self.failed = false;
    }

    /// An error came: the open transaction (explicit or implicit) will roll back.
    pub fn error(&mut self) {
        self.failed = true;
    }

    /// A ReadyForQuery of transaction status `status`: idle again, the transaction's changes
    /// are the session's (unless it failed).
    pub fn ready(&mut self, status: u8) {
        if status != b'I' {
            return;
        }
        if !self.failed {
            self.committed = self.effective_owned();
        }
        self.open.clear();
        self.failed = false;
    }

    /// The `SET` statement in effect now for setting `name`, if any.
    pub fn statement(&self, name: &str) -> Option<String> {
        let sets = self.effective_owned();
        sets.into_iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }

    /// The `SET` statements in effect now, in order, one per setting.
    pub fn effective(&self) -> Vec<String> {
        self.effective_owned().into_iter().map(|(_, s)| s).collect()
    }

    fn effective_owned(&self) -> Vec<(String, String)> {
        let mut sets = self.committed.clone();
        for e in &self.open {
            match e {
                Entry::Set(name, stmt) => {
                    sets.retain(|(n, _)| n != name);
                    sets.push((name.clone(), stmt.clone()));
                }
                Entry::Reset(None) => sets.clear(),
                Entry::Reset(Some(name)) => sets.retain(|(n, _)| n != name),
                Entry::Savepoint(_) => {}
            }
        }
        sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> (SessionOp, String) {
        (
            SessionOp::Set(SetKind::Setting(name.into())),
            format!("SET {name} = {value}"),
        )
    }

    fn run(s: &mut SessionSets, (op, stmt): (SessionOp, String)) {
        s.completed(&op, &stmt);
    }

    #[test]
    fn a_set_outside_a_transaction_holds_once_its_query_ends_well() {
        let mut s = SessionSets::default();
        run(&mut s, set("a", "1"));
        assert_eq!(s.effective(), ["SET a = 1"], "in effect at once");
        s.ready(b'I');
        assert_eq!(s.effective(), ["SET a = 1"]);
        // SET b = 2; SELECT 1/0 in one Query: the implicit transaction rolls back.
        run(&mut s, set("b", "2"));
        s.error();
        s.ready(b'I');
        assert_eq!(s.effective(), ["SET a = 1"]);
    }

    #[test]
    fn a_set_in_a_transaction_goes_with_its_rollback() {
        let mut s = SessionSets::default();
        run(&mut s, set("a", "1"));
        s.ready(b'I');
        run(&mut s, set("a", "2"));
        s.ready(b'T');
        assert_eq!(s.effective(), ["SET a = 2"], "in effect in the transaction");
        s.rollback();
        s.ready(b'I');
        assert_eq!(s.effective(), ["SET a = 1"]);
        // A transaction that failed and was committed: a rollback all the same.
        run(&mut s, set("a", "3"));
        s.error();
        s.ready(b'E');
        s.ready(b'I');
        assert_eq!(s.effective(), ["SET a = 1"]);
    }

    #[test]
    fn savepoints_keep_or_drop_what_was_set_after_them() {
        let mut s = SessionSets::default();
        run(&mut s, set("a", "1"));
        s.savepoint("sp");
        run(&mut s, set("b", "1"));
        s.error();
        s.rollback_to("SP");
        s.savepoint("q");
        run(&mut s, set("c", "1"));
        s.release("q");
        s.completed(&SessionOp::Reset(Some("a".into())), "RESET a");
        s.ready(b'I');
        assert_eq!(s.effective(), ["SET c = 1"]);
        s.completed(&SessionOp::Discard { all: true }, "DISCARD ALL");
        s.ready(b'I');
        assert!(s.effective().is_empty());
    }
}
