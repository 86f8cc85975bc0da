//! The client's prepared statements as the secondary knows them: each under a name of
//! pgbridge's own (`pgbridge_s1`, ...) and with the read rewrite's text, prepared there on the
//! statement's first read and again when the client re-prepared the name with other text. The
//! unnamed statement is parsed again for every read, as the client does.
//!
//! Simple-protocol reads bound to parameters ([`crate::sql::BoundRead`]) are prepared once per
//! text and parameter types (`pgbridge_b1`, ...), up to [`MAX_BOUND`] of them: past that the
//! least recently used eighth is closed. A text the secondary refused to prepare is remembered
//! (up to [`MAX_BOUND`] of them), and sent with its literals from then on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::BytesMut;

use crate::protocol::wire;

/// A prepared statement of the client's, as prepared on the secondary.
#[derive(Debug)]
struct Prepared {
    name: String,
    sql: Arc<str>,
}

/// How many bound reads one connection keeps prepared.
pub(super) const MAX_BOUND: usize = 256;

/// A bound read's statement on the secondary.
#[derive(Debug)]
struct Bound {
    types: Vec<u32>,
    name: String,
    /// When it was last used.
    stamp: u64,
}

/// What one connection to the secondary has prepared.
#[derive(Debug, Default)]
pub(super) struct Statements {
    /// Client statement name to its statement on the secondary.
    prepared: HashMap<String, Prepared>,
    next_name: u64,
    /// Bound reads' statements, by text (a text may be bound with other types).
    bound: HashMap<Arc<str>, Vec<Bound>>,
    bound_count: usize,
    clock: u64,
    /// Texts the secondary would not prepare.
    unbindable: HashSet<Arc<str>>,
}

impl Statements {
    /// The secondary's name for the client's statement `stmt`, whose read rewrite is `sql` with
    /// parameter types `types`. When the secondary does not have it yet, its Parse (after the
    /// Close of what the name meant before) goes into `request`.
    pub(super) fn prepare(
        &mut self,
        stmt: &str,
        sql: &Arc<str>,
        types: &[u32],
        request: &mut BytesMut,
    ) -> String {
        let known = self
            .prepared
            .get(stmt)
            .filter(|p| !stmt.is_empty() && p.sql == *sql);
        if let Some(p) = known {
            return p.name.clone();
        }
        let name = if stmt.is_empty() {
            String::new()
        } else {
            self.next_name += 1;
            format!("pgbridge_s{}", self.next_name)
        };
        if let Some(old) = self.prepared.remove(stmt).filter(|p| !p.name.is_empty()) {
            request.extend_from_slice(&wire::close(b'S', &old.name));
        }
        request.extend_from_slice(&wire::parse_typed(&name, sql, types));
        let prepared = Prepared {
            name: name.clone(),
            sql: sql.clone(),
        };
        self.prepared.insert(stmt.to_string(), prepared);
        name
    }

    /// Forgets `stmt`, whose Parse may not have taken: the next read parses it again.
    pub(super) fn forget(&mut self, stmt: &str) {
        self.prepared.remove(stmt);
    }

    /// The secondary's name for bound read `sql` with parameter types `types`, and whether it
    /// is prepared in this `request` (its Parse goes in, after the Close of the least recently
    /// used when there are [`MAX_BOUND`]).
    pub(super) fn prepare_bound(
        &mut self,
        sql: &Arc<str>,
        types: &[u32],
        request: &mut BytesMut,
    ) -> (String, bool) {
        self.clock += 1;
        let stamp = self.clock;
        if let Some(b) = self
            .bound
            .get_mut(sql)
            .and_then(|v| v.iter_mut().find(|b| b.types == types))
        {
            b.stamp = stamp;
            return (b.name.clone(), false);
        }
        if self.bound_count >= MAX_BOUND {
            self.evict_bound(request);
        }
        self.next_name += 1;
        let name = format!("pgbridge_b{}", self.next_name);
        request.extend_from_slice(&wire::parse_typed(&name, sql, types));
        self.bound.entry(sql.clone()).or_default().push(Bound {
            types: types.to_vec(),
            name: name.clone(),
            stamp,
        });
        self.bound_count += 1;
        (name, true)
    }

    /// Closes the least recently used eighth of the bound reads' statements, oldest first.
    fn evict_bound(&mut self, request: &mut BytesMut) {
        let mut stamps: Vec<u64> = self.bound.values().flatten().map(|b| b.stamp).collect();
        stamps.sort_unstable();
        let cut = stamps[(stamps.len() / 8).max(1) - 1];
        let mut gone = Vec::new();
        for list in self.bound.values_mut() {
            list.retain(|b| {
                b.stamp > cut || {
                    gone.push((b.stamp, b.name.clone()));
                    false
                }
            });
        }
        gone.sort_unstable();
        for (_, name) in gone {
            request.extend_from_slice(&wire::close(b'S', &name));
        }
        self.bound.retain(|_, v| !v.is_empty());
        self.bound_count = self.bound.values().map(Vec::len).sum();
    }

    /// The secondary refused to prepare `sql` (with `types`): it goes with its literals from
    /// now on.
    pub(super) fn refuse_bound(&mut self, sql: &Arc<str>, types: &[u32]) {
        if let Some(list) = self.bound.get_mut(sql) {
            list.retain(|b| b.types != types);
            if list.is_empty() {
                self.bound.remove(sql);
            }
        }
        self.bound_count = self.bound.values().map(Vec::len).sum();
        // Texts that fill other literals in are many: past the limit they start over (a text
        // forgotten is refused once more, one failed Parse).
        if self.unbindable.len() >= MAX_BOUND {
            self.unbindable.clear();
        }
        self.unbindable.insert(sql.clone());
    }

    /// Whether the secondary refused to prepare `sql`.
    pub(super) fn is_unbindable(&self, sql: &str) -> bool {
        self.unbindable.contains(sql)
    }

    /// Forgets everything: the connection is gone. (What the secondary refused, it refuses on
    /// the next connection too.)
    pub(super) fn clear(&mut self) {
        self.prepared.clear();
        self.bound.clear();
        self.bound_count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn prepare(s: &mut Statements, stmt: &str, sql: &str) -> (String, BytesMut) {
        let mut request = BytesMut::new();
        let name = s.prepare(stmt, &Arc::from(sql), &[23], &mut request);
        (name, request)
    }

    #[test]
    fn a_named_statement_is_parsed_once_and_again_when_its_text_changes() {
        let mut s = Statements::default();
        let (name, request) = prepare(&mut s, "q", "SELECT 1");
        assert_eq!(name, "pgbridge_s1");
        assert_eq!(
            &request[..],
            &wire::parse_typed("pgbridge_s1", "SELECT 1", &[23])[..]
        );
        let (name, request) = prepare(&mut s, "q", "SELECT 1");
        assert_eq!((name.as_str(), request.len()), ("pgbridge_s1", 0));
        // The client prepared the name again, with other text.
        let (name, request) = prepare(&mut s, "q", "SELECT 2");
        assert_eq!(name, "pgbridge_s2");
        let close = wire::close(b'S', "pgbridge_s1");
        let parse = wire::parse_typed("pgbridge_s2", "SELECT 2", &[23]);
        assert_eq!(&request[..], &[&close[..], &parse[..]].concat());
        s.forget("q");
        let (name, request) = prepare(&mut s, "q", "SELECT 2");
        assert_eq!(name, "pgbridge_s3");
        assert_eq!(
            &request[..],
            &wire::parse_typed("pgbridge_s3", "SELECT 2", &[23])[..]
        );
    }

    #[test]
    fn bound_reads_are_prepared_once_per_text_and_types() {
        let mut s = Statements::default();
        let sql: Arc<str> = Arc::from("SELECT $1");
        let mut request = BytesMut::new();
        assert_eq!(
            s.prepare_bound(&sql, &[0], &mut request),
            ("pgbridge_b1".into(), true)
        );
        assert_eq!(
            &request[..],
            &wire::parse_typed("pgbridge_b1", "SELECT $1", &[0])[..]
        );
        let mut again = BytesMut::new();
        assert_eq!(
            s.prepare_bound(&sql, &[0], &mut again),
            ("pgbridge_b1".into(), false)
        );
        assert!(again.is_empty());
        // The same text bound with a number of another type is another statement.
        assert_eq!(s.prepare_bound(&sql, &[20], &mut again).0, "pgbridge_b2");
        s.refuse_bound(&sql, &[20]);
        assert!(s.is_unbindable("SELECT $1") && !s.is_unbindable("SELECT $2"));
        assert!(!s.prepare_bound(&sql, &[0], &mut BytesMut::new()).1);
    }

    #[test]
    fn refused_texts_are_remembered_up_to_the_limit() {
        let mut s = Statements::default();
        let texts: Vec<Arc<str>> = (0..=MAX_BOUND)
            .map(|i| Arc::from(format!("SELECT concat($1, {i})")))
            .collect();
        for t in &texts[..MAX_BOUND] {
            s.refuse_bound(t, &[0]);
        }
        assert!(texts[..MAX_BOUND].iter().all(|t| s.is_unbindable(t)));
        s.refuse_bound(&texts[MAX_BOUND], &[0]);
        assert!(s.is_unbindable(&texts[MAX_BOUND]) && !s.is_unbindable(&texts[0]));
        assert_eq!(s.unbindable.len(), 1);
    }

    #[test]
    fn past_the_limit_the_least_recently_used_are_closed() {
        let mut s = Statements::default();
        let texts: Vec<Arc<str>> = (0..=MAX_BOUND)
            .map(|i| Arc::from(format!("SELECT $1 + {i}")))
            .collect();
        for t in &texts[..MAX_BOUND] {
            s.prepare_bound(t, &[23], &mut BytesMut::new());
        }
        // The first text was used last: the next eighth goes.
        s.prepare_bound(&texts[0], &[23], &mut BytesMut::new());
        let mut request = BytesMut::new();
        let (name, parsed) = s.prepare_bound(&texts[MAX_BOUND], &[23], &mut request);
        assert!(parsed);
        let closes: Vec<Bytes> = (2..=1 + MAX_BOUND / 8)
            .map(|n| wire::close(b'S', &format!("pgbridge_b{n}")))
            .collect();
        let parse = wire::parse_typed(&name, &texts[MAX_BOUND], &[23]);
        let mut want = closes.concat();
        want.extend_from_slice(&parse);
        assert_eq!(&request[..], &want[..]);
        assert!(!s.prepare_bound(&texts[0], &[23], &mut request).1);
        assert_eq!(s.bound_count, MAX_BOUND - MAX_BOUND / 8 + 1);
    }

    #[test]
    fn the_unnamed_statement_is_parsed_for_every_read() {
        let mut s = Statements::default();
        for _ in 0..2 {
            let (name, request) = prepare(&mut s, "", "SELECT 1");
            assert_eq!(name, "");
            assert_eq!(&request[..], &wire::parse_typed("", "SELECT 1", &[23])[..]);
        }
        prepare(&mut s, "q", "SELECT 1");
        s.clear();
        assert_eq!(prepare(&mut s, "q", "SELECT 1").0, "pgbridge_s2");
    }
}
