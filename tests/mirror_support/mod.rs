//! Shared by the mirror_* tests: row images captured from a real primary the way the session
//! captures them (binary results with type OIDs, or text with the session's settings), and one
//! transaction's journey: intent, COMMIT on the primary, outcome.
#![allow(dead_code)]

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pgbridge::config::{MirrorConfig, OnError};
use pgbridge::divergence::Recorder;
use pgbridge::mirror::apply::ApplierConfig;
use pgbridge::mirror::{Applier, ApplierHandle, Journal, JournalOptions, Row, TxnRecord, Value};
use pgbridge::rules::RuleSet;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Any value's raw bytes, as the wire carried them.
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Row images in binary format: the columns of `sql`'s result, with their type OIDs.
pub async fn capture_binary(c: &Client, sql: &str) -> Vec<Row> {
    let rows = c
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    rows.iter()
        .map(|r| {
            let mut row = Row::new();
            for (i, col) in r.columns().iter().enumerate() {
                let Raw(bytes) = r.get(i);
                row.columns.push(col.name().to_string());
                row.values.push(Value {
                    type_oid: col.type_().oid(),
                    format: 1,
                    bytes: bytes.map(Into::into),
                });
            }
            row
        })
        .collect()
}

/// Row images in text format (simple query), with the given type OIDs by column position.
pub async fn capture_text(c: &Client, sql: &str, oids: &[u32]) -> Vec<Row> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                let mut row = Row::new();
                for (i, col) in r.columns().iter().enumerate() {
                    row.columns.push(col.name().to_string());
                    row.values.push(match r.get(i) {
                        Some(s) => Value::text(oids[i], s),
                        None => Value::null(oids[i]),
                    });
                }
                Some(row)
            }
            _ => None,
        })
        .collect()
}

/// Keeps the first `n` columns of a row (the row image), or renames the trailing old key.
pub fn split(row: &Row, n: usize, old_key_names: &[&str]) -> (Row, Row) {
    let image = Row {
        columns: row.columns[..n].to_vec(),
        values: row.values[..n].to_vec(),
    };
    let old = Row {
        columns: old_key_names.iter().map(|s| s.to_string()).collect(),
        values: row.values[n..n + old_key_names.len()].to_vec(),
    };
    (image, old)
}

/// Inside a transaction on the primary: its xid8.
pub async fn xid(c: &Client) -> i64 {
    let r = c
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .unwrap();
    r.get::<_, String>(0).parse().unwrap()
}

/// What the session does at COMMIT: intent (durable), COMMIT or ROLLBACK on the primary, outcome.
pub async fn finish(primary: &Client, journal: &Journal, txn: &TxnRecord, commit: bool) -> u64 {
    let id = journal.append_intent(txn).await.unwrap();
    primary
        .batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
        .await
        .unwrap();
    journal.append_outcome(id, commit).unwrap();
    id
}

pub struct Mirror {
    pub dir: tempfile::TempDir,
    pub journal: Arc<Journal>,
    pub recorder: Arc<Recorder>,
    pub rules: Arc<ArcSwap<RuleSet>>,
}

impl Mirror {
    pub fn new(rules: RuleSet) -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(JournalOptions::new(dir.path().join("journal"))).unwrap();
        let recorder =
            Arc::new(Recorder::open_path(&dir.path().join("divergences.jsonl"), true).unwrap());
        Mirror {
            dir,
            journal,
            recorder,
            rules: Arc::new(ArcSwap::from_pointee(rules)),
        }
    }

    pub fn applier(&self, secondary_url: &str, on_error: OnError) -> ApplierHandle {
        let mirror = MirrorConfig {
            on_error,
            ..MirrorConfig::default()
        };
        let mut cfg = ApplierConfig::new(secondary_url.parse().unwrap(), &mirror);
        cfg.max_backoff = Duration::from_millis(500);
        cfg.halt_retry = Duration::from_millis(200);
        Applier::spawn(
            self.journal.clone(),
            self.rules.clone(),
            self.recorder.clone(),
            cfg,
        )
    }

    /// Closes the journal and opens it again (a restart of pgbridge); stop the applier first.
    pub async fn reopen(&mut self) {
        let weak = Arc::downgrade(&self.journal);
        let placeholder = self.dir.path().join("placeholder");
        self.journal = Journal::open(JournalOptions::new(placeholder)).unwrap();
        // The aborted applier tasks let go of the journal when the runtime next polls them.
        for _ in 0..200 {
            if weak.upgrade().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.journal = Journal::open(JournalOptions::new(self.dir.path().join("journal"))).unwrap();
    }

    /// The divergence records written so far.
    pub fn divergences(&self) -> Vec<serde_json::Value> {
        self.recorder.flush();
        std::fs::read_to_string(self.dir.path().join("divergences.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
