//! Mirrored writes compared (issue 5): what a write did on the target against what it did on the
//! primary, as `write_mismatch` divergences.
//!
//! - `rows` mode: each captured row says what the primary did to it (inserted, updated,
//!   deleted); the target's statement for it says what happened there (the upsert inserted or
//!   updated, the delete found the row or not). They are tallied per journal transaction, table
//!   and statement kind, and a difference is one record whose `primary` and `secondary` read as
//!   the command tags each side would have given (`UPDATE 3` against `UPDATE 2`: the target
//!   lacked a row), with the rows that differ by key.
//! - `statements` mode: the replay's row count against the primary's CommandComplete tag.
//!
//! The applier's statements leave the target right either way (the upsert inserts the missing
//! row); a record says the target *was* different before, which a backfill racing the mirror
//! also causes. Records are collected while a batch applies and written only once it committed,
//! so a batch retried after a failure does not record twice.

use serde_json::{json, Value as Json};

use super::Row;
use crate::divergence::{normalize_query, Divergence, Kind};
use crate::rules::TableName;

/// Rows listed in one record, at most.
const MAX_LISTED: usize = 10;

/// The statement kind a captured row stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Insert,
    Update,
    Delete,
}

impl Verb {
    /// The command tag a statement of this kind that touched `n` rows gives.
    fn tag(self, n: u64) -> String {
        match self {
            Verb::Insert => format!("INSERT 0 {n}"),
            Verb::Update => format!("UPDATE {n}"),
            Verb::Delete => format!("DELETE {n}"),
        }
    }
}

/// One table and statement kind of one transaction.
#[derive(Debug)]
struct Tally {
    table: TableName,
    verb: Verb,
    /// Rows the primary's statements touched (and were compared).
    primary: u64,
    /// Of those, the rows the target had as the primary did (an updated or deleted row there, an
    /// inserted row absent).
    secondary: u64,
    /// Keys of the rows that differed.
    differing: Vec<Json>,
}

/// The comparisons of one journal transaction, as the applier applies it.
#[derive(Debug)]
pub struct WriteCheck {
    journal_id: u64,
    session: u64,
    redact: bool,
    tallies: Vec<Tally>,
    statements: Vec<Divergence>,
}

impl WriteCheck {
    pub fn new(journal_id: u64, session: u64, redact: bool) -> WriteCheck {
        WriteCheck {
            journal_id,
            session,
            redact,
            tallies: Vec::new(),
            statements: Vec::new(),
        }
    }

    /// One captured row applied: `as_expected` when the target had it as the primary did (for
    /// an insert: did not have it). `key` is the row's key columns.
    pub fn row(&mut self, table: &TableName, verb: Verb, as_expected: bool, key: &Row) {
        let i = match self
            .tallies
            .iter()
            .position(|t| t.verb == verb && &t.table == table)
        {
            Some(i) => i,
            None => {
                self.tallies.push(Tally {
                    table: table.clone(),
                    verb,
                    primary: 0,
                    secondary: 0,
                    differing: Vec::new(),
                });
                self.tallies.len() - 1
            }
        };
        let t = &mut self.tallies[i];
        t.primary += 1;
        if as_expected {
            t.secondary += 1;
        } else {
            t.differing.push(key_detail(key, self.redact));
        }
    }

    /// A statement replayed (`mirror = "statements"`): the primary's tag against the replay's row
    /// count. `filtered`: the rule has a `where`, so the replay may rightly touch fewer rows.
    pub fn statement(
        &mut self,
        table: &TableName,
        sql: &str,
        primary_tag: &str,
        secondary_rows: u64,
        filtered: bool,
    ) {
        let Some((verb, primary_rows)) = tag_count(primary_tag) else {
            return;
        };
        if sql_verb(sql) != Some(verb) {
            return;
        }
        let differs = if filtered {
            secondary_rows > primary_rows
        } else {
            secondary_rows != primary_rows
        };
        if !differs {
            return;
        }
        let mut d = Divergence::new(Kind::WriteMismatch, table.to_string());
        d.query = normalize_query(sql);
        d.primary = primary_tag.to_string();
        d.secondary = verb.tag(secondary_rows);
        d.session = Some(self.session);
        d.detail = json!({
            "journal_id": self.journal_id,
            "mirror": "statements",
            "rows_primary": primary_rows,
            "rows_secondary": secondary_rows,
        });
        self.statements.push(d);
    }

    /// The records of the differences found, if any.
    pub fn divergences(self) -> Vec<Divergence> {
        let WriteCheck {
            journal_id,
            session,
            tallies,
            mut statements,
            ..
        } = self;
        for t in tallies.into_iter().filter(|t| !t.differing.is_empty()) {
            let mut d = Divergence::new(Kind::WriteMismatch, t.table.to_string());
            d.primary = t.verb.tag(t.primary);
            d.secondary = t.verb.tag(t.secondary);
            d.session = Some(session);
            // The target lacked rows the primary updated or deleted; it had rows the primary
            // inserted as new.
            let (what, action) = match t.verb {
                Verb::Insert => ("extra", "the target's row was overwritten"),
                Verb::Update => ("missing", "the row was inserted on the target"),
                Verb::Delete => ("missing", "nothing to delete on the target"),
            };
            let mut detail = serde_json::Map::new();
            detail.insert("journal_id".into(), json!(journal_id));
            detail.insert("mirror".into(), json!("rows"));
            detail.insert(format!("{what}_rows"), json!(t.differing.len()));
            let listed: Vec<Json> = t.differing.into_iter().take(MAX_LISTED).collect();
            detail.insert(what.into(), Json::Array(listed));
            detail.insert("action".into(), json!(action));
            d.detail = Json::Object(detail);
            statements.push(d);
        }
        statements
    }
}

/// A command tag's kind and row count (`UPDATE 3`, `INSERT 0 1`, `DELETE 0`).
fn tag_count(tag: &str) -> Option<(Verb, u64)> {
    let mut words = tag.split_ascii_whitespace();
    let verb = match words.next()? {
        "INSERT" => Verb::Insert,
        "UPDATE" => Verb::Update,
        "DELETE" => Verb::Delete,
        _ => return None,
    };
    Some((verb, words.last()?.parse().ok()?))
}

/// The kind of a rewritten statement, by its first word.
fn sql_verb(sql: &str) -> Option<Verb> {
    let word: String = sql
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    match word.to_ascii_uppercase().as_str() {
        "INSERT" => Some(Verb::Insert),
        "UPDATE" => Some(Verb::Update),
        "DELETE" => Some(Verb::Delete),
        _ => None,
    }
}

/// The key of a row for a divergence record: column names, and values unless redacted.
pub fn key_detail(row: &Row, redact: bool) -> Json {
    if redact {
        json!(row.columns)
    } else {
        let map: serde_json::Map<String, Json> = row
            .columns
            .iter()
            .zip(&row.values)
            .map(|(c, v)| (c.clone(), Json::String(v.display())))
            .collect();
        Json::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::Value;

    fn key(ts: &str) -> Row {
        Row::new()
            .with("symbol", Value::text(25, "DXY"))
            .with("ts", Value::text(1184, ts))
    }

    #[test]
    fn rows_as_the_primary_had_them_record_nothing() {
        let t = TableName::new("public", "bars");
        let mut c = WriteCheck::new(4, 9, false);
        c.row(&t, Verb::Insert, true, &key("10:00"));
        c.row(&t, Verb::Update, true, &key("10:00"));
        c.row(&t, Verb::Delete, true, &key("10:00"));
        assert!(c.divergences().is_empty());
    }

    #[test]
    fn differing_rows_are_tallied_per_table_and_kind_with_their_keys() {
        let t = TableName::new("public", "bars");
        let mut c = WriteCheck::new(4, 9, false);
        c.row(&t, Verb::Update, true, &key("10:00"));
        c.row(&t, Verb::Update, false, &key("10:01"));
        c.row(&t, Verb::Update, true, &key("10:02"));
        c.row(&t, Verb::Delete, false, &key("10:03"));
        c.row(&t, Verb::Insert, false, &key("10:04"));
        let d = c.divergences();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].kind, Kind::WriteMismatch);
        assert_eq!(d[0].table, "bars");
        assert_eq!(
            (d[0].primary.as_str(), d[0].secondary.as_str()),
            ("UPDATE 3", "UPDATE 2")
        );
        assert_eq!(d[0].session, Some(9));
        assert_eq!(d[0].detail["journal_id"], 4);
        assert_eq!(d[0].detail["missing_rows"], 1);
        assert_eq!(d[0].detail["missing"][0]["ts"], "10:01");
        assert_eq!(
            (d[1].primary.as_str(), d[1].secondary.as_str()),
            ("DELETE 1", "DELETE 0")
        );
        assert_eq!(
            (d[2].primary.as_str(), d[2].secondary.as_str()),
            ("INSERT 0 1", "INSERT 0 0")
        );
        assert_eq!(d[2].detail["extra"][0]["symbol"], "DXY");

        let mut c = WriteCheck::new(4, 9, true);
        c.row(&t, Verb::Update, false, &key("10:01"));
        let d = c.divergences();
        assert_eq!(
            d[0].detail["missing"][0],
            json!(["symbol", "ts"]),
            "redacted"
        );
    }

    #[test]
    fn statements_compare_their_tags() {
        let t = TableName::new("public", "bars");
        let mut c = WriteCheck::new(4, 9, true);
        let update = "UPDATE public.data_bars SET volume = 7 WHERE ts = '2026-01-05'";
        c.statement(&t, update, "UPDATE 1", 1, false);
        c.statement(&t, "DELETE FROM x", "DELETE 2", 2, false);
        c.statement(&t, "DELETE FROM x", "TRUNCATE TABLE", 0, false);
        assert!(c.divergences().is_empty());

        let mut c = WriteCheck::new(4, 9, true);
        c.statement(&t, update, "UPDATE 1", 0, false);
        c.statement(&t, "INSERT INTO x VALUES (1)", "INSERT 0 0", 1, false);
        // With a `where`, the replay may touch fewer rows, never more.
        c.statement(&t, update, "UPDATE 3", 1, true);
        c.statement(&t, update, "UPDATE 1", 2, true);
        let d = c.divergences();
        assert_eq!(d.len(), 3);
        assert_eq!(
            (d[0].primary.as_str(), d[0].secondary.as_str()),
            ("UPDATE 1", "UPDATE 0")
        );
        assert_eq!(
            d[0].query,
            "UPDATE public.data_bars SET volume = $1 WHERE ts = $2"
        );
        assert_eq!(d[1].secondary, "INSERT 0 1");
        assert_eq!(d[2].secondary, "UPDATE 2");
    }
}
