//! The changes of the session's open transaction, with its savepoints.
//!
//! Changes are added when a statement completes; a ROLLBACK TO SAVEPOINT drops those made since
//! the savepoint, RELEASE keeps them, ROLLBACK drops everything. Only a COMMIT that pgbridge
//! journaled releases them to the mirror.

use crate::mirror::Change;

#[derive(Debug, Default)]
pub struct TxnBuffer {
    changes: Vec<Change>,
    /// Savepoint names and the number of changes when each was set.
    savepoints: Vec<(String, usize)>,
}

impl TxnBuffer {
    pub fn push(&mut self, changes: impl IntoIterator<Item = Change>) {
        self.changes.extend(changes);
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// `SAVEPOINT name`.
    pub fn savepoint(&mut self, name: &str) {
        self.savepoints.push((fold(name), self.changes.len()));
    }

    /// `ROLLBACK TO SAVEPOINT name`: the savepoint stays, the changes after it go.
    pub fn rollback_to(&mut self, name: &str) {
        let name = fold(name);
        if let Some(i) = self.savepoints.iter().rposition(|(n, _)| *n == name) {
            let keep = self.savepoints[i].1;
            self.changes.truncate(keep);
            self.savepoints.truncate(i + 1);
        }
    }

    /// `RELEASE SAVEPOINT name`: it and the savepoints after it go, the changes stay.
    pub fn release(&mut self, name: &str) {
        let name = fold(name);
        if let Some(i) = self.savepoints.iter().rposition(|(n, _)| *n == name) {
            self.savepoints.truncate(i);
        }
    }

    /// The transaction ended.
    pub fn clear(&mut self) {
        self.changes.clear();
        self.savepoints.clear();
    }
}

/// Savepoint names fold like other identifiers unless quoted.
fn fold(name: &str) -> String {
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => name.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::ChangeOp;
    use crate::rules::TableName;

    fn change() -> Change {
        Change {
            table: TableName::new("public", "t"),
            op: ChangeOp::Truncate,
        }
    }

    #[test]
    fn savepoints_drop_and_keep_as_postgresql_does() {
        let mut t = TxnBuffer::default();
        t.push([change()]);
        t.savepoint("a");
        t.push([change(), change()]);
        t.savepoint("B");
        t.push([change()]);
        t.rollback_to("b");
        assert_eq!(t.len(), 3);
        t.push([change()]);
        t.rollback_to("A");
        assert_eq!(t.len(), 1);
        t.push([change()]);
        t.release("a");
        t.rollback_to("a");
        assert_eq!(t.len(), 2, "a released savepoint is gone");
        t.clear();
        assert!(t.is_empty());
    }
}
