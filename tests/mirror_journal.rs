//! The journal on disk: what comes back after a reopen, group commit, a torn or corrupt tail,
//! applied segments removed, and a journal above its size limit.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgbridge::config::OnFull;
use pgbridge::mirror::{
    Change, ChangeOp, Journal, JournalError, JournalOptions, Row, TxnRecord, Value,
};
use pgbridge::rules::TableName;

fn txn(n: i64) -> TxnRecord {
    let mut t = TxnRecord::new(1, Some(1000 + n));
    t.captured_at_us = 1_767_623_400_000_000 + n;
    t.settings = vec![("DateStyle".into(), "ISO, MDY".into())];
    t.changes.push(Change {
        table: TableName::new("public", "derived_data_bars"),
        op: ChangeOp::Upsert {
            row: Row::new()
                .with("symbol", Value::text(25, "DXY"))
                .with("volume", Value::text(20, &n.to_string())),
            in_filter: Some(true),
            effect: None,
        },
    });
    t
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn intents_and_outcomes_come_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let uuid;
    {
        let j = Journal::open(JournalOptions::new(dir.path())).unwrap();
        uuid = j.uuid().to_string();
        for n in 1..=3 {
            assert_eq!(j.append_intent(&txn(n)).await.unwrap(), n as u64);
        }
        j.append_outcome(1, true).unwrap();
        j.append_outcome(2, false).unwrap();
        assert_eq!(j.in_doubt().len(), 1);
        assert_eq!(j.read(3).unwrap(), txn(3));
        // Outcomes are written with the next batch; one more intent flushes them.
        assert_eq!(j.append_intent(&txn(4)).await.unwrap(), 4);
    }
    let j = Journal::open(JournalOptions::new(dir.path())).unwrap();
    assert_eq!(j.uuid(), uuid, "the journal keeps its identity");
    assert_eq!(j.last_id(), 4);
    let doubt: Vec<u64> = j.in_doubt().iter().map(|d| d.id).collect();
    assert_eq!(doubt, vec![3, 4]);
    assert_eq!(j.in_doubt()[0].xid, Some(1003));
    let first = j.next_ready(0).unwrap();
    assert_eq!((first.id, first.committed), (1, true));
    assert_eq!(j.ready_batch(0, 10).len(), 2, "intent 3 has no outcome yet");
    assert_eq!(j.read(2).unwrap(), txn(2));
    assert_eq!(j.append_intent(&txn(5)).await.unwrap(), 5);
    // A second process on the same directory is refused.
    assert!(matches!(
        Journal::open(JournalOptions::new(dir.path())),
        Err(JournalError::Locked(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(JournalOptions::new(dir.path())).unwrap();
    let writers = 64;
    let each = 40;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..each {
                ids.push(j.append_intent(&txn(w * 1000 + n)).await.unwrap());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    ids.sort_unstable();
    let total = (writers * each) as u64;
    assert_eq!(ids, (1..=total).collect::<Vec<_>>(), "every id once");
    let fsyncs = j.counters.fsyncs.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{writers} writers: {total} appends in {elapsed:?} ({:.0}/s), {fsyncs} fsyncs ({:.1} appends per fsync)",
        total as f64 / elapsed.as_secs_f64(),
        total as f64 / fsyncs as f64
    );
    assert!(
        fsyncs * 4 <= total,
        "group commit: {fsyncs} fsyncs for {total} appends"
    );
}

/// Where each record of a segment ends (the records start after the 8-byte magic line; each is
/// `len u32 | crc u32 | len bytes`), up to the zeroed space written ahead.
fn record_ends(data: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 8;
    while at + 4 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        at += 8 + len;
        ends.push(at);
    }
    ends
}

#[tokio::test]
async fn a_torn_tail_is_cut_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(JournalOptions::new(dir.path())).unwrap();
        for n in 1..=5 {
            j.append_intent(&txn(n)).await.unwrap();
        }
    }
    let seg = segments(dir.path()).pop().unwrap();
    let data = std::fs::read(&seg).unwrap();
    let ends = record_ends(&data);
    assert_eq!(ends.len(), 5);
    assert!(
        data.len() > ends[4] && data[ends[4]..].iter().all(|&b| b == 0),
        "zeroed space is written ahead of the records"
    );
    // The process died in the middle of writing the fifth record: its last bytes never
    // reached the disk (the preallocated zeros are still there).
    let mut torn = data.clone();
    torn[ends[4] - 7..ends[4]].fill(0);
    std::fs::write(&seg, &torn).unwrap();
    {
        let j = Journal::open(JournalOptions::new(dir.path())).unwrap();
        assert_eq!(j.counters.cut_tails.load(Ordering::Relaxed), 1);
        assert_eq!(j.last_id(), 4);
        assert_eq!(j.in_doubt().len(), 4);
        assert_eq!(j.read(4).unwrap(), txn(4));
        // The cut id is never acknowledged, so it is reused.
        assert_eq!(j.append_intent(&txn(50)).await.unwrap(), 5);
        assert_eq!(j.read(5).unwrap(), txn(50));
    }
    // A flipped bit in the third record: it and everything after it are cut.
    let data = std::fs::read(&seg).unwrap();
    let ends = record_ends(&data);
    assert_eq!(ends.len(), 5);
    let mut bad = data.clone();
    bad[ends[1] + 20] ^= 0x40;
    std::fs::write(&seg, &bad).unwrap();
    {
        let j = Journal::open(JournalOptions::new(dir.path())).unwrap();
        assert_eq!(j.last_id(), 2);
        assert_eq!(j.read(2).unwrap(), txn(2));
        assert!(j.read(3).is_err());
        // A shorter record now where longer ones were: what was cut must not come back.
        assert_eq!(j.append_intent(&txn(3)).await.unwrap(), 3);
    }
    let j = Journal::open(JournalOptions::new(dir.path())).unwrap();
    assert_eq!(
        j.counters.cut_tails.load(Ordering::Relaxed),
        0,
        "a clean reopen cuts nothing"
    );
    assert_eq!(j.last_id(), 3);
    assert_eq!(j.read(3).unwrap(), txn(3));
    assert_eq!(j.append_intent(&txn(4)).await.unwrap(), 4);
}

/// Segments written before preallocation end where their file ends; a torn one is shorter.
#[tokio::test]
async fn a_segment_without_zeroed_space_reads_and_grows() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(JournalOptions::new(dir.path())).unwrap();
        for n in 1..=3 {
            j.append_intent(&txn(n)).await.unwrap();
        }
    }
    let seg = segments(dir.path()).pop().unwrap();
    let data = std::fs::read(&seg).unwrap();
    let ends = record_ends(&data);
    // As an older pgbridge left it, the third record torn off mid-way.
    std::fs::write(&seg, &data[..ends[2] - 5]).unwrap();
    {
        let j = Journal::open(JournalOptions::new(dir.path())).unwrap();
        assert_eq!(j.last_id(), 2);
        assert_eq!(j.append_intent(&txn(30)).await.unwrap(), 3);
        j.append_outcome(3, true).unwrap();
    }
    let j = Journal::open(JournalOptions::new(dir.path())).unwrap();
    assert_eq!(j.counters.cut_tails.load(Ordering::Relaxed), 0);
    assert_eq!(j.read(3).unwrap(), txn(30));
    assert_eq!(
        j.in_doubt().len(),
        2,
        "the outcome written on close came back"
    );
}

#[tokio::test]
async fn applied_segments_are_removed_and_ids_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = JournalOptions::new(dir.path());
    opts.segment_bytes = 1024;
    {
        let j = Journal::open(opts.clone()).unwrap();
        for n in 1..=50 {
            let id = j.append_intent(&txn(n)).await.unwrap();
            j.append_outcome(id, true).unwrap();
        }
        let before = segments(dir.path()).len();
        assert!(before > 5, "{before} segments");
        j.set_applied(40);
        let after = segments(dir.path()).len();
        assert!(after < before && after >= 2, "{before} -> {after}");
        assert_eq!(j.segments(), after);
        assert_eq!(j.ready_batch(40, 100).len(), 10);
        assert_eq!(j.read(41).unwrap(), txn(41));
        j.set_applied(50);
        assert_eq!(segments(dir.path()).len(), 1, "the newest segment stays");
    }
    let j = Journal::open(opts).unwrap();
    assert!(j.last_id() >= 50);
    assert!(j.in_doubt().is_empty());
    let id = j.append_intent(&txn(51)).await.unwrap();
    assert!(
        id > 50,
        "ids are never reused after everything was applied: {id}"
    );
}

#[tokio::test]
async fn a_full_journal_refuses_or_holds_writers() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = JournalOptions::new(dir.path().join("refuse"));
    opts.segment_bytes = 1024;
    opts.max_bytes = 4096;
    opts.on_full = OnFull::Refuse;
    let j = Journal::open(opts).unwrap();
    let mut refused = None;
    for n in 1..=100 {
        match j.append_intent(&txn(n)).await {
            Ok(id) => j.append_outcome(id, true).unwrap(),
            Err(e) => {
                refused = Some((n, e));
                break;
            }
        }
    }
    let (n, e) = refused.expect("a full journal refuses");
    assert!(matches!(e, JournalError::Full { .. }), "{e}");
    assert!(e.to_string().contains("full"), "{e}");
    assert!(j.counters.full.load(std::sync::atomic::Ordering::Relaxed));
    // The applier catches up: space again.
    j.set_applied(n as u64 - 1);
    assert!(j.append_intent(&txn(n)).await.is_ok());

    let mut opts = JournalOptions::new(dir.path().join("backpressure"));
    opts.segment_bytes = 1024;
    opts.max_bytes = 4096;
    opts.on_full = OnFull::Backpressure;
    let j: Arc<Journal> = Journal::open(opts).unwrap();
    let mut last = 0;
    while !j.counters.full.load(std::sync::atomic::Ordering::Relaxed) && j.bytes() <= 4096 {
        last = j.append_intent(&txn(last as i64)).await.unwrap();
        j.append_outcome(last, true).unwrap();
    }
    let waiting = {
        let j = j.clone();
        tokio::spawn(async move { j.append_intent(&txn(999)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the writer waits while the journal is full"
    );
    j.set_applied(last);
    let id = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("released once the applier freed space")
        .unwrap()
        .unwrap();
    assert_eq!(id, last + 1);
}
