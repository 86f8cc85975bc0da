//! The [`Recorder`]: appends divergence records to the log without blocking the runtime.
//!
//! Records go through a channel to a writer thread that appends them (one JSON object per line)
//! and flushes after each burst; counts by kind are kept in memory for `/api/status`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::{error, info_span, warn};

use super::{Divergence, DivergenceCounts, Kind};
use crate::config::DivergenceConfig;

enum Msg {
    Line(String),
    Flush(mpsc::Sender<()>),
}

/// Appends divergence records to the configured log; share it in an `Arc`.
pub struct Recorder {
    path: PathBuf,
    redact: bool,
    tx: Mutex<mpsc::Sender<Msg>>,
    counts: Mutex<BTreeMap<String, u64>>,
    /// Records by table and kind, for the read switch's safety gate and the dashboard.
    by_table: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .finish()
    }
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    #[serde(flatten)]
    d: &'a Divergence,
}

/// Why the divergence log could not be opened. Each displays as the I/O error alone: the
/// caller names the log (`cannot open the divergence log PATH: ...`).
#[derive(Debug, thiserror::Error)]
pub enum DivergenceError {
    /// The directory that holds the log could not be created.
    #[error("{source}")]
    CreateDir { dir: PathBuf, source: io::Error },
    /// The log could not be opened (or created) for appending.
    #[error("{source}")]
    Open { path: PathBuf, source: io::Error },
    /// The writer thread could not be started.
    #[error("{source}")]
    Spawn { source: io::Error },
}

impl Recorder {
    /// Opens (creates) the log for appending and starts the writer thread.
    pub fn open(config: &DivergenceConfig) -> Result<Recorder, DivergenceError> {
        Recorder::open_path(&config.log, config.redact)
    }

    pub fn open_path(path: &Path, redact: bool) -> Result<Recorder, DivergenceError> {
        let file = open_log(path)?;
        let (tx, rx) = mpsc::channel::<Msg>();
        // The writer outlives whatever opened the recorder: a span of its own, with no parent.
        let span = info_span!(parent: None, "divergence_writer", log = %path.display());
        std::thread::Builder::new()
            .name("pgbridge-divergence".into())
            .spawn(move || span.in_scope(|| write_records(file, rx)))
            .map_err(|source| DivergenceError::Spawn { source })?;
        Ok(Recorder {
            path: path.to_path_buf(),
            redact,
            tx: Mutex::new(tx),
            counts: Mutex::new(BTreeMap::new()),
            by_table: Mutex::new(BTreeMap::new()),
        })
    }

    /// Whether row values must be left out of `detail`.
    pub fn redact(&self) -> bool {
        self.redact
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one divergence: counted at once, written by the writer thread.
    pub fn record(&self, d: Divergence) {
        let kind = d.kind.as_str();
        metrics::counter!("pgbridge_divergences_total", "kind" => kind, "table" => d.table.clone())
            .increment(1);
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind.to_string())
            .or_default() += 1;
        *self
            .by_table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(d.table.clone())
            .or_default()
            .entry(kind.to_string())
            .or_default() += 1;
        warn!(kind, table = %d.table, session = ?d.session, secondary = %d.secondary, "divergence");
        let line = Line {
            ts: rfc3339(SystemTime::now()),
            d: &d,
        };
        match serde_json::to_string(&line) {
            Ok(mut s) => {
                s.push('\n');
                let _ = self
                    .tx
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .send(Msg::Line(s));
            }
            Err(e) => error!(error = %e, "cannot serialize a divergence record"),
        }
    }

    /// Waits until every record so far is written (tests, shutdown). Blocks: call it from a
    /// blocking context.
    pub fn flush(&self) {
        let (ack, done) = mpsc::channel();
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Msg::Flush(ack));
        if sent.is_ok() {
            let _ = done.recv();
        }
    }

    /// The records written since start, by kind.
    pub fn counts(&self) -> DivergenceCounts {
        let by_kind = self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        DivergenceCounts {
            total: by_kind.values().sum(),
            by_kind,
        }
    }

    /// How many records name this table (as rules name it: `derived_data_bars`), of any kind.
    pub fn count_table(&self, table: &str) -> u64 {
        self.by_table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
            .map(|kinds| kinds.values().sum())
            .unwrap_or(0)
    }

    /// The records of each table (as rules name it), by kind.
    pub fn by_table(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.by_table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many records of one kind.
    pub fn count(&self, kind: Kind) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind.as_str())
            .copied()
            .unwrap_or(0)
    }
}

/// Opens the log for appending, creating it and its directory when they do not exist.
fn open_log(path: &Path) -> Result<File, DivergenceError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| DivergenceError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| DivergenceError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// The writer thread, until every sender is gone: appends each burst of records that arrived
/// together, flushes once, then acknowledges the flushes asked for in the burst.
fn write_records(file: File, rx: mpsc::Receiver<Msg>) {
    let mut out = BufWriter::new(file);
    while let Ok(first) = rx.recv() {
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(l) => {
                    if let Err(e) = out.write_all(l.as_bytes()) {
                        error!(error = %e, "cannot write a divergence record");
                    }
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            error!(error = %e, "cannot write divergence records");
        }
        for a in acks {
            let _ = a.send(());
        }
    }
}

/// `2026-01-05T14:30:00.123456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::calendar::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_767_623_400) + Duration::from_micros(5);
        assert_eq!(rfc3339(t), "2026-01-05T14:30:00.000005Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn records_are_lines_of_json_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d/divergences.jsonl");
        let r = Recorder::open_path(&path, true).unwrap();
        let mut d = Divergence::new(Kind::SecondaryError, "derived_data_bars");
        d.secondary = "23505".into();
        d.detail = serde_json::json!({"key": ["symbol", "ts"]});
        r.record(d.clone());
        d.kind = Kind::InDoubt;
        r.record(d);
        r.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["kind"], "secondary_error");
        assert_eq!(lines[0]["table"], "derived_data_bars");
        assert_eq!(lines[0]["secondary"], "23505");
        assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
        let s = r.counts();
        assert_eq!(s.total, 2);
        assert_eq!(s.by_kind["in_doubt"], 1);
    }

    #[test]
    fn a_log_that_cannot_be_opened_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let err = Recorder::open_path(&file.join("d.jsonl"), true).unwrap_err();
        assert!(matches!(err, DivergenceError::CreateDir { .. }), "{err:?}");
        let err = Recorder::open_path(dir.path(), true).unwrap_err();
        assert!(matches!(err, DivergenceError::Open { .. }), "{err:?}");
        assert!(
            !err.to_string().contains(&*dir.path().to_string_lossy()),
            "{err}"
        );
    }
}
