//! The client's prepared statements as the secondary knows them: each under a name of
//! pgbridge's own (`pgbridge_s1`, ...) and with the read rewrite's text, prepared there on the
//! statement's first read and again when the client re-prepared the name with other text. The
//! unnamed statement is parsed again for every read, as the client does.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;

use crate::protocol::wire;

/// A prepared statement of the client's, as prepared on the secondary.
#[derive(Debug)]
struct Prepared {
    name: String,
    sql: Arc<str>,
}

/// What one connection to the secondary has prepared.
#[derive(Debug, Default)]
pub(super) struct Statements {
    /// Client statement name to its statement on the secondary.
    prepared: HashMap<String, Prepared>,
    next_name: u64,
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

    /// Forgets everything: the connection is gone.
    pub(super) fn clear(&mut self) {
        self.prepared.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
