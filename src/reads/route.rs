//! Where one statement goes: the pure decision a session makes per statement (per Sync), from
//! the statement's analysis, the read flags of this moment and the tables shared with the
//! secondary. No I/O, no locks: the caller loads the flags once and passes them in.

use std::collections::HashSet;

use super::flags::Flags;
use crate::rules::{ReadSource, TableName};
use crate::sql::{Analysis, Kind};

/// Unmigrated tables present and identical on the secondary (`[secondary] shared_tables`).
#[derive(Debug, Clone, Default)]
pub enum SharedTables {
    /// `["*"]`: the secondary is the primary's own database.
    All,
    Some(HashSet<TableName>),
    #[default]
    None,
}

impl SharedTables {
    /// From the config's list; names as SQL writes them (`instruments`, `ref.currencies`).
    pub fn new(list: &[String]) -> SharedTables {
        if list.iter().any(|t| t == "*") {
            return SharedTables::All;
        }
        let set: HashSet<TableName> = list.iter().filter_map(|t| TableName::parse(t)).collect();
        if set.is_empty() {
            SharedTables::None
        } else {
            SharedTables::Some(set)
        }
    }

    pub fn from_config(config: &crate::config::Config) -> SharedTables {
        config
            .secondary
            .as_ref()
            .map_or(SharedTables::None, |s| SharedTables::new(&s.shared_tables))
    }

    pub fn contains(&self, table: &TableName) -> bool {
        match self {
            SharedTables::All => true,
            SharedTables::Some(set) => set.contains(table),
            SharedTables::None => false,
        }
    }
}

/// Where one statement goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// The client's statement to the primary, as always.
    Primary,
    /// To the primary for the client, and `sql` (the read rewrite) to the secondary to compare;
    /// `table` is the table flagged `shadow` the comparison is recorded for.
    Shadow { sql: &'a str, table: &'a TableName },
    /// `sql`, the read rewrite, served by the secondary.
    Secondary { sql: &'a str },
}

/// The rule for one statement text: served by the secondary only when it is one read
/// that writes nothing (`may_write` false), outside a transaction that has written, and every
/// table it reads is served there (migrated tables flagged `secondary`, unmigrated ones shared).
/// Shadowed when some migrated table it reads is flagged `shadow` and every other is flagged
/// `shadow` or `secondary` or is shared. Everything else, including what could not be parsed or
/// rewritten, goes to the primary. A table flagged for a share of the sessions is served (or
/// compared) that way for sessions whose `bucket` (0 to 99, one per session) falls in it.
pub fn route<'a>(
    analysis: &'a Analysis,
    flags: &Flags,
    shared: &SharedTables,
    in_write_txn: bool,
    bucket: u8,
) -> Route<'a> {
    if in_write_txn {
        return Route::Primary;
    }
    let Some(sql) = analysis.read_rewrite() else {
        return Route::Primary;
    };
    let [stmt] = analysis.statements.as_slice() else {
        return Route::Primary;
    };
    if stmt.kind != Kind::Read || !stmt.others.iter().all(|t| shared.contains(t)) {
        return Route::Primary;
    }
    let mut shadowed = None;
    for table in &stmt.reads {
        match flags.source_for(table, bucket) {
            Some(ReadSource::Secondary) => {}
            Some(ReadSource::Shadow) => {
                shadowed.get_or_insert(table);
            }
            Some(ReadSource::Primary) | None => return Route::Primary,
        }
    }
    match shadowed {
        Some(table) => Route::Shadow { sql, table },
        None if stmt.reads.is_empty() => Route::Primary,
        None => Route::Secondary { sql },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::StatementInfo;

    fn read(reads: &[&str], others: &[&str]) -> Analysis {
        let t = |v: &[&str]| v.iter().map(|n| TableName::parse(n).unwrap()).collect();
        let mut s = StatementInfo {
            kind: Kind::Read,
            text: 0..1,
            reads: t(reads),
            others: t(others),
            writes: Vec::new(),
            may_write: false,
            read_rewrite: Some("SELECT rewritten".into()),
            read_bound: None,
            read_params: Vec::new(),
            read_literal_proof: false,
            ordered: false,
            capture: None,
            statement_rewrite: None,
            note: None,
            plan: Default::default(),
        };
        s.text = 0..1;
        Analysis {
            statements: vec![s],
            ..Default::default()
        }
    }

    #[test]
    fn a_join_needs_every_table_served_by_the_secondary() {
        use ReadSource::*;
        let shared = SharedTables::new(&["instruments".into()]);
        let a = read(&["a", "b"], &["instruments"]);
        let sql = "SELECT rewritten";
        let r = |fa, fb| {
            route(
                &a,
                &Flags::fixed(&[("a", fa), ("b", fb)]),
                &shared,
                false,
                0,
            )
        };
        assert_eq!(r(Secondary, Secondary), Route::Secondary { sql });
        assert_eq!(r(Secondary, Primary), Route::Primary);
        let b = TableName::parse("b").unwrap();
        assert_eq!(r(Secondary, Shadow), Route::Shadow { sql, table: &b });
        assert_eq!(r(Primary, Shadow), Route::Primary);
        let none = SharedTables::None;
        let f = Flags::fixed(&[("a", Secondary), ("b", Secondary)]);
        assert_eq!(route(&a, &f, &none, false, 0), Route::Primary);
        assert_eq!(
            route(&a, &f, &SharedTables::new(&["*".into()]), false, 0),
            Route::Secondary { sql }
        );
        assert_eq!(route(&a, &f, &shared, true, 0), Route::Primary);
    }
}
