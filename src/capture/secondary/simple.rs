//! Simple protocol: a Query the router sends to the secondary runs there at once; its rows go to
//! the client behind the primary's row description for the query's shape, which the primary
//! gives once per shape and session (Parse, Describe and Sync of the text) and the tracker keeps.

use bytes::BytesMut;

use super::served;
use crate::capture::drive::Driver;
use crate::capture::expect::Expect;
use crate::divergence::{query_shape, Divergence};
use crate::protocol::wire;
use crate::reads::secondary::Failure;
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
        if !self.shared.lock().may_serve()
            || !self.may_read(analysis).await
            || !self.read_your_writes().await
        {
            return Err(None);
        }
        let script = self.settings_script();
        let answer = self.serving().server.simple(sql, &script).await;
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
        served("served");
        self.answer_query(text, rows);
        Ok(())
    }

    /// The secondary's rows go to the client behind the primary's row description of the
    /// query's shape; the first time a shape is served, the primary describes the text (as its
    /// Query would have, without running it).
    fn answer_query(&mut self, text: &str, rows: BytesMut) {
        let shape = query_shape(text);
        let known = self.shared.lock().shapes.get(&shape).cloned();
        let Some(row) = known else {
            self.expect(Expect::ShapeDescribe {
                shape,
                answer: rows.freeze(),
                row: None,
                failed: false,
            });
            self.out.extend_from_slice(&wire::parse("", text));
            self.out.extend_from_slice(&wire::describe_statement(""));
            self.out.extend_from_slice(&wire::sync());
            return;
        };
        let mut bytes = BytesMut::new();
        if let Some(row) = row {
            bytes.extend_from_slice(&row);
        }
        bytes.extend_from_slice(&rows);
        self.queue_served(bytes.freeze(), true);
    }
}
