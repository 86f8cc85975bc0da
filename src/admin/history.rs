//! `GET /api/history`: what the dashboard draws over time. Every [`INTERVAL`] this instance
//! samples its mirror's lag and positions, the reverse mirror's lag, its sessions and each
//! table's divergence counts by kind, and keeps the last [`KEEP`] samples (an hour) in memory,
//! so that a page opened after an incident still shows it. Counts are cumulative since start:
//! the page draws the differences between samples.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::AppState;
use crate::instance::Instance;

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How many samples are kept: an hour of them.
pub const KEEP: usize = 720;

/// One sample.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Sample {
    /// When it was taken, in seconds since the epoch.
    pub ts: f64,
    pub sessions: u64,
    /// The forward mirror: its lag, and the journal's and applier's positions.
    pub lag_seconds: f64,
    pub journal_seq: u64,
    pub applied_seq: u64,
    pub parked: u64,
    /// The reverse mirror's lag, when one runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverse_lag_seconds: Option<f64>,
    /// Divergences recorded since start, by table, then kind.
    pub divergences: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The samples kept, oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

/// The body of `GET /api/history`.
#[derive(Debug, Serialize)]
pub(super) struct HistoryView {
    interval_seconds: u64,
    samples: Vec<Sample>,
}

impl History {
    /// Keeps `sample`, forgetting the oldest past [`KEEP`].
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn samples(&self) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.iter().cloned().collect()
    }

    /// Samples `instance` now and every [`INTERVAL`] until the process ends.
    pub fn spawn(self: &Arc<History>, instance: Arc<Instance>) {
        let history = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                history.push(sample(&instance));
            }
        });
    }
}

/// What `instance` shows now.
pub fn sample(instance: &Instance) -> Sample {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut s = Sample {
        ts,
        sessions: instance.sessions() as u64,
        ..Sample::default()
    };
    if let Some(m) = &instance.migration {
        s.divergences = m.recorder.by_table();
        if let Some(mirror) = &m.mirror {
            let r = mirror.applier.report();
            (s.lag_seconds, s.journal_seq, s.applied_seq, s.parked) =
                (r.lag_seconds, r.journal_seq, r.applied_seq, r.parked);
        }
        s.reverse_lag_seconds = m
            .writes
            .reverse
            .as_ref()
            .map(|r| r.stats().report().lag_seconds);
    }
    s
}

pub(super) async fn history(State(state): State<AppState>) -> Json<HistoryView> {
    Json(HistoryView {
        interval_seconds: INTERVAL.as_secs(),
        samples: state.history.samples(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ts: f64) -> Sample {
        Sample {
            ts,
            ..Sample::default()
        }
    }

    #[test]
    fn keeps_the_newest_hour_oldest_first() {
        let h = History::default();
        for i in 0..KEEP + 3 {
            h.push(at(i as f64));
        }
        let samples = h.samples();
        assert_eq!(samples.len(), KEEP);
        assert_eq!(samples[0].ts, 3.0);
        assert_eq!(samples[KEEP - 1].ts, (KEEP + 2) as f64);
    }
}
