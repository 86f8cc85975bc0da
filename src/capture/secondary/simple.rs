//! Simple protocol: a Query the router sends to the secondary runs there at once; its rows go to
//! the client behind the primary's row description for the query's shape, which the primary
//! gives once per shape and session (Parse, Describe and Sync of the text) and the tracker keeps.

use bytes::BytesMut;

use super::served;
use crate::capture::drive::{Driver, Pending};
use crate::capture::expect::Expect;
use crate::divergence::{query_shape, Divergence};
use crate::protocol::wire;
use crate::reads::secondary::{Failure, Rows};
use crate::sql::Analysis;

/// The SQLSTATE of a query the client cancelled.
const QUERY_CANCELED: &str = "57014";

impl<'a> Driver<'a> {
    /// Serves a simple-protocol read on the secondary. `Err` when the primary must serve it,
    /// with the record to keep if the primary answers without error.
    pub(in crate::capture) async fn serve_query(
        &mut self,
        analysis: &Analysis,
        text: &str,
    ) -> Result<(), Option<Divergence>> {
        let Some(sql) = self.secondary_route(analysis) else {
            return Err(None);
        };
        self.shared.lock().refresh_descriptions();
        if !self.shared.lock().may_serve()
            || !self.snapshot_allows().await
            || !self.may_read(analysis).await
            || !self.read_your_writes().await
        {
            return Err(None);
        }
        let script = self.settings_script();
        let server = &mut self.serving().server;
        let answer = match analysis.read_bound() {
            Some(bound) => server.bound(bound, sql, &script).await,
            None => server.simple(sql, &script).await,
        };
        let rows = match answer {
            Ok(rows) => rows,
            // The client cancelled it (the cancel went to the secondary too): it ends here.
            Err(Failure::Error {
                sqlstate, frame, ..
            }) if sqlstate == QUERY_CANCELED => {
                self.queue_served(frame, true);
                served("cancelled");
                return Ok(());
            }
            Err(f) => return Err(self.fell_back(f, &analysis.first_read(), text)),
        };
        if self.answer_query(text, &analysis.first_read(), rows) {
            // Counted once the primary's description agreed, when it is asked for
            // (`capture/track/ends.rs`).
            if self.pending.is_none() {
                served("served");
            }
            return Ok(());
        }
        Err(self.fell_back(Failure::Columns, &analysis.first_read(), text))
    }

    /// The secondary answered a read whose columns turned out not to be the primary's: the
    /// client's Query (`query`) goes to the primary after all, and that is recorded.
    pub(in crate::capture) fn unserved_read(&mut self, query: &[u8], table: &str, text: &str) {
        let _ = self.fell_back(Failure::Columns, table, text);
        self.expect(Expect::Query {
            steps: Default::default(),
            hold: false,
        });
        self.out.extend_from_slice(query);
    }

    /// The secondary's rows go to the client behind the primary's row description of the
    /// query's shape, when the two describe the same columns (false when not: the primary
    /// serves the read, and describes the shape again next time). The first time a shape is
    /// served, the primary describes the text (as its Query would have, without running it)
    /// and the comparison waits for its answer.
    fn answer_query(&mut self, text: &str, table: &str, served: Rows) -> bool {
        let shape = query_shape(text);
        let known = self.shared.lock().fresh_shape(&shape);
        let Some(row) = known else {
            self.expect(Expect::ShapeDescribe {
                shape,
                answer: served.rows.freeze(),
                secondary: served.description,
                row: None,
                failed: false,
            });
            self.out.extend_from_slice(&wire::parse("", text));
            self.out.extend_from_slice(&wire::describe_statement(""));
            self.out.extend_from_slice(&wire::sync());
            self.pending = Some(Pending::Shape {
                query: wire::query(text),
                table: table.to_string(),
                text: text.to_string(),
            });
            return true;
        };
        let same = match (&row, &served.description) {
            (Some(ours), Some(theirs)) => wire::same_columns(ours, theirs),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.shared.lock().shapes.remove(&shape);
            return false;
        }
        let mut bytes = BytesMut::new();
        if let Some(row) = row {
            bytes.extend_from_slice(&row);
        }
        bytes.extend_from_slice(&served.rows);
        self.queue_served(bytes.freeze(), true);
        true
    }
}
