//! The backfill under load, against real servers: 100,000 rows the mirror never saw copied while
//! four sessions write through pgbridge (upserts, deletes, key changes, COPY, rollbacks), across
//! a SIGKILL of pgbridge, behind a backlog of 100,000 mirrored rows, across a restart of the
//! primary, cancelled and resumed, and held to its `max_rows_per_sec`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::dxy::*;
use common::jobs::*;
use common::*;

const ROWS: usize = 100_000;
const SESSIONS: u64 = 4;

/// Where the workload's new keys go relative to the backfill's cursor, which walks the keys up
/// from 2026-01-01: `Ahead`, the backfill reads them too; `Behind`, it never does, so that the
/// rows it counts are the ones there were, each once.
#[derive(Clone, Copy, PartialEq)]
enum NewKeys {
    Ahead,
    Behind,
}

/// What the workload did, as attempts (a statement that failed may be counted).
#[derive(Default)]
struct Counts {
    rounds: AtomicU64,
    /// Keys that came to be: inserts of new keys, the new keys of key changes, COPY rows.
    created: AtomicU64,
    /// Keys that ceased to be: deletes, the old keys of key changes.
    removed: AtomicU64,
    errors: AtomicU64,
}

/// Sessions writing through pgbridge until stopped, each on a thread of its own; a session whose
/// connection drops (pgbridge killed) connects again.
struct Workload {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    threads: Vec<JoinHandle<()>>,
}

impl Workload {
    fn start(bridge: &Bridge, db: &str, rows: usize, new_keys: NewKeys) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let threads = (0..SESSIONS)
            .map(|s| {
                let conn = bridge.conn_str("postgres", "", db);
                let (stop, counts) = (stop.clone(), counts.clone());
                std::thread::spawn(move || session(&conn, s, rows as u64, new_keys, &stop, &counts))
            })
            .collect();
        Workload {
            stop,
            counts,
            threads,
        }
    }

    /// Stops the sessions and waits for them; what they did.
    fn stop(self) -> Arc<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let c = self.counts;
        let rounds = c.rounds.load(Ordering::Relaxed);
        assert!(rounds >= 4 * SESSIONS, "the workload ran ({rounds} rounds)");
        c
    }
}

fn ts(i: u64) -> String {
    format!("'2026-01-01 00:00:00+00'::timestamptz + {i} * interval '1 minute'")
}

/// The statements of round `round` of session `s` on a table of `rows` rows, each with the
/// keys it creates and removes.
fn round_sql(s: u64, round: u64, rows: u64, new_keys: NewKeys) -> Vec<(String, u64, u64)> {
    let i = (round * 7919 + s * 25013) % rows;
    // A new key: after every existing one, or before 2026 (behind the cursor).
    let fresh = |k: u64| match new_keys {
        NewKeys::Ahead => ts(rows + 1_000_000 * (s + 1) + k),
        NewKeys::Behind => format!(
            "'2025-01-01 00:00:00+00'::timestamptz - {} * interval '1 minute'",
            1_000_000 * (s + 1) + k
        ),
    };
    // The rows it moves go ahead of the cursor, or behind it (where the backfill never reads).
    let (shift, moved) = match new_keys {
        NewKeys::Ahead => ("interval '100 years'", 1),
        NewKeys::Behind => ("interval '-100 years'", 0),
    };
    let dxy = |i: u64| format!("symbol = 'DXY' AND ts = {}", ts(i % rows));
    let upsert = format!(
        "INSERT INTO derived_data_bars VALUES ('DXY', {}, 3, 4, 2, 3.5, 7) \
         ON CONFLICT (symbol, ts) DO UPDATE SET close = derived_data_bars.close + 1, \
         volume = EXCLUDED.volume + derived_data_bars.volume",
        ts(i)
    );
    let insert = format!(
        "INSERT INTO derived_data_bars VALUES ('DXY', {}, 1, 2, 0.5, 1.5, {round}) \
         ON CONFLICT (symbol, ts) DO UPDATE SET volume = 0",
        fresh(round * 100)
    );
    let rolled_back = format!(
        "BEGIN; UPDATE derived_data_bars SET volume = -1 WHERE {}; \
         DELETE FROM derived_data_bars WHERE {}; \
         INSERT INTO derived_data_bars VALUES ('DXY', {}, 9, 9, 9, 9, 9); ROLLBACK",
        dxy(i + 5),
        dxy(i + 6),
        fresh(round * 100 + 1)
    );
    let outside = format!(
        "INSERT INTO derived_data_bars VALUES ('ABC', {}, 1, 1, 1, 1, 1) \
         ON CONFLICT (symbol, ts) DO UPDATE SET volume = derived_data_bars.volume + 1",
        ts(i)
    );
    vec![
        (upsert, 0, 0),
        (insert, 1, 0),
        (
            format!("DELETE FROM derived_data_bars WHERE {}", dxy(i + 13)),
            0,
            1,
        ),
        (
            format!(
                "UPDATE derived_data_bars SET ts = ts + {shift} WHERE {}",
                dxy(i + 1009)
            ),
            moved,
            1,
        ),
        (rolled_back, 0, 0),
        (outside, 0, 0),
    ]
}

/// COPY rows of round `round` of session `s`: ten new DXY keys (a microsecond apart, in an hour
/// of the session's own) and an ABC row.
fn copy_rows(s: u64, round: u64, new_keys: NewKeys) -> String {
    let day = match new_keys {
        NewKeys::Ahead => "2100-01-01",
        NewKeys::Behind => "1900-01-01",
    };
    let at = |n: u64| format!("{day} {s:02}:00:00.{:06}+00", n % 1_000_000);
    let mut data = String::new();
    for k in 0..10 {
        data.push_str(&format!(
            "DXY\t{}\t1\t2\t0.5\t{k}.5\t{round}\n",
            at(round * 10 + k)
        ));
    }
    data.push_str(&format!("ABC\t{}\t1\t1\t1\t1\t1\n", at(round)));
    data
}

/// COPY FROM STDIN of `data` through `conn` with psql, in the simple protocol (a COPY in the
/// extended protocol is relayed but not mirrored: tests/capture_copy.rs); whether it succeeded.
fn copy_in(conn: &str, data: &str) -> bool {
    use std::io::Write;
    let sql = "COPY derived_data_bars (symbol, ts, open, high, low, close, volume) FROM STDIN";
    let mut child = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql, conn])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql is installed");
    let _ = child.stdin.take().unwrap().write_all(data.as_bytes());
    child.wait().is_ok_and(|s| s.success())
}

/// One session's loop: a round of statements, a COPY every third round, until `stop`.
fn session(conn: &str, s: u64, rows: u64, new_keys: NewKeys, stop: &AtomicBool, counts: &Counts) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client: Option<tokio_postgres::Client> = None;
        let mut round = 0;
        while !stop.load(Ordering::Relaxed) {
            let c = match &client {
                Some(c) if !c.is_closed() => c,
                _ => match tokio_postgres::connect(conn, tokio_postgres::NoTls).await {
                    Ok((c, connection)) => {
                        tokio::spawn(connection);
                        client.insert(c)
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            for (sql, created, removed) in round_sql(s, round, rows, new_keys) {
                counts.created.fetch_add(created, Ordering::Relaxed);
                counts.removed.fetch_add(removed, Ordering::Relaxed);
                if c.batch_execute(&sql).await.is_err() {
                    // A statement failing inside BEGIN ... leaves the transaction open and
                    // aborted, holding its row locks: the others would wait on them forever.
                    let _ = c.batch_execute("ROLLBACK").await;
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if round % 3 == 0 {
                counts.created.fetch_add(10, Ordering::Relaxed);
                if !copy_in(conn, &copy_rows(s, round, new_keys)) {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            round += 1;
            counts.rounds.fetch_add(1, Ordering::Relaxed);
        }
    });
}

fn rows_done(job: &serde_json::Value) -> i64 {
    job["rows_done"].as_i64().unwrap()
}

#[test]
fn a_backfill_of_100k_rows_under_four_writing_sessions_leaves_the_target_equal() {
    let (bridge, db) = with_unmirrored_rows("load_race", ROWS);
    let id = start_job(&bridge, "{\"max_rows_per_sec\":40000}");
    let load = Workload::start(&bridge, &db, ROWS, NewKeys::Ahead);
    let done = wait_state_within(&bridge, id, "done", Duration::from_secs(90));
    // A verify while the sessions go on writing: their writes are no difference.
    let verified = assert_verify_clean(&bridge);
    let counts = load.stop();
    wait_applied(&bridge);
    assert_equal(&db);
    let matched = verified["result"]["tables"][0]["matched"].as_i64().unwrap();
    assert!(matched > ROWS as i64 / 2, "{verified}");
    // The total was counted before the workload began; the rows done are the rows there were,
    // less those removed before the backfill reached them, plus the new ones it reached.
    assert_eq!(done["rows_total"].as_i64(), Some(ROWS as i64), "{done}");
    let (created, removed) = (
        counts.created.load(Ordering::Relaxed) as i64,
        counts.removed.load(Ordering::Relaxed) as i64,
    );
    let range = ROWS as i64 - removed..=ROWS as i64 + created;
    assert!(range.contains(&rows_done(&done)), "{done} not in {range:?}");
    assert!(
        done["progress"]["total"].as_i64() >= done["progress"]["done"].as_i64(),
        "{done}"
    );
}

#[test]
fn a_backfill_killed_under_load_resumes_and_counts_no_chunk_twice() {
    let (mut bridge, db) = with_unmirrored_rows("load_kill", ROWS);
    let chunk = 2000;
    let id = start_job(
        &bridge,
        &format!("{{\"chunk_rows\":{chunk},\"max_rows_per_sec\":25000}}"),
    );
    // From the first chunk on, the workload's new keys are all behind the cursor.
    wait_rows_done(&bridge, id, 1);
    let load = Workload::start(&bridge, &db, ROWS, NewKeys::Behind);
    wait_rows_done(&bridge, id, 20_000);
    bridge.signal(9);
    bridge.wait_exit(Duration::from_secs(5));
    bridge.restart();
    let resumed = job(&bridge, id);
    assert_eq!(resumed["state"], "running", "{resumed}");
    let before = rows_done(&resumed);
    assert!((20_000..ROWS as i64).contains(&before), "{resumed}");
    let done = wait_state_within(&bridge, id, "done", Duration::from_secs(90));
    let counts = load.stop();
    wait_applied(&bridge);
    assert_equal(&db);
    assert_verify_clean(&bridge);
    // Each key position the rows had is passed once; a chunk counted twice would add 2000.
    let removed = counts.removed.load(Ordering::Relaxed) as i64;
    let range = ROWS as i64 - removed..=ROWS as i64;
    assert!(range.contains(&rows_done(&done)), "{done} not in {range:?}");
    let copied_here = metric(&bridge, "pgbridge_backfill_rows_total", "derived_data_bars");
    assert!(
        copied_here <= (ROWS as i64 - before + chunk) as f64,
        "the restarted process copied {copied_here} rows after {before}"
    );
}

/// Session `s`'s share of the backlog: 300 transactions of 84 new DXY rows each.
fn backlog_script(s: u64) -> String {
    let mut script = String::new();
    for t in 0..300 {
        let first = 10_000_000 + (s * 300 + t) * 84;
        script.push_str(&format!(
            "INSERT INTO derived_data_bars (symbol, ts, open, high, low, close, volume) \
             SELECT 'DXY', {}, 1, 2, 0.5, 1.5, i FROM generate_series({first}, {}) AS i;\n",
            ts(0).replace("0 * interval", "i * interval"),
            first + 83
        ));
    }
    script
}

#[test]
fn a_backfill_behind_a_backlog_of_100k_mirrored_rows_pauses_and_finishes() {
    let c = cluster();
    let mut secondary = start_server();
    let db = fresh_db("load_backlog");
    psql_on(
        secondary.port(),
        "postgres",
        &format!("CREATE DATABASE {db}"),
    );
    let (bridge, db) = mirrored_with(c.primary_port, secondary.port(), &db, DXY_RULE, "");
    let unmirrored = 20_000;
    insert_unmirrored(c.primary_port, &db, unmirrored);
    secondary.stop().unwrap();
    // 1,200 transactions of 84 rows each through pgbridge, journaled while the secondary is down.
    let started = Instant::now();
    let writers: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let conn = bridge.conn_str("postgres", "", &db);
            std::thread::spawn(move || psql_script(&conn, &backlog_script(s)))
        })
        .collect();
    for w in writers {
        let (out, rc) = w.join().unwrap();
        assert_eq!(rc, 0, "{out}");
    }
    let mirror = &status(&bridge)["mirror"];
    let backlog = mirror["journal_seq"].as_u64().unwrap() - mirror["applied_seq"].as_u64().unwrap();
    assert!(backlog >= 1200, "{backlog} transactions wait");
    // Old enough to be lag by the gate's seconds as well (5 s), whatever the applier does first.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(started.elapsed()));
    secondary.start_again().unwrap();
    let id = start_job(&bridge, "{\"max_rows_per_sec\":0}");
    let done = wait_state_within(&bridge, id, "done", Duration::from_secs(120));
    wait_applied(&bridge);
    assert_equal_on(c.primary_port, secondary.port(), &db);
    let total = unmirrored as i64 + 1200 * 84;
    assert_eq!(done["rows_total"].as_i64(), Some(total), "{done}");
    assert_eq!(rows_done(&done), total, "{done}");
    let log = bridge.log();
    assert!(
        log.contains("backfill paused while the mirror lags"),
        "{log}"
    );
    assert!(
        log.contains("backfill goes on: the mirror caught up"),
        "{log}"
    );
}

#[test]
fn a_backfill_reads_on_after_the_primary_restarts() {
    let c = cluster();
    let mut primary = start_server();
    let db = fresh_db("load_primary");
    psql_on(primary.port(), "postgres", &format!("CREATE DATABASE {db}"));
    let (bridge, db) = mirrored_with(primary.port(), c.secondary_port, &db, DXY_RULE, "");
    let rows = 20_000;
    insert_unmirrored(primary.port(), &db, rows);
    let id = start_job(&bridge, "{\"chunk_rows\":1000,\"max_rows_per_sec\":5000}");
    wait_rows_done(&bridge, id, 3000);
    primary.stop().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    primary.start_again().unwrap();
    let done = wait_state_within(&bridge, id, "done", Duration::from_secs(60));
    assert_eq!(rows_done(&done), rows as i64, "{done}");
    assert!(
        bridge.log().contains("backfill chunk failed"),
        "the restart was seen"
    );
    wait_applied(&bridge);
    assert_equal_on(primary.port(), c.secondary_port, &db);
}

#[test]
fn a_backfill_cancelled_under_load_resumes_where_it_ended() {
    let rows = 30_000;
    let (bridge, db) = with_unmirrored_rows("load_cancel", rows);
    let id = start_job(&bridge, "{\"chunk_rows\":1000,\"max_rows_per_sec\":10000}");
    wait_rows_done(&bridge, id, 1);
    let load = Workload::start(&bridge, &db, rows, NewKeys::Behind);
    wait_rows_done(&bridge, id, 5000);
    let path = format!("/api/jobs/{id}");
    let (code, body) = http(bridge.admin_port, "DELETE", &path, Some(TOKEN), None);
    assert_eq!(code, 200, "{body}");
    let cancelled = wait_state(&bridge, id, "cancelled");
    assert!(
        (5000..rows as i64).contains(&rows_done(&cancelled)),
        "{cancelled}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(start_job(&bridge, "{}"), id, "the cancelled job resumes");
    let done = wait_state_within(&bridge, id, "done", Duration::from_secs(60));
    let counts = load.stop();
    wait_applied(&bridge);
    assert_equal(&db);
    let removed = counts.removed.load(Ordering::Relaxed) as i64;
    let range = rows as i64 - removed..=rows as i64;
    assert!(range.contains(&rows_done(&done)), "{done} not in {range:?}");
}

#[test]
fn max_rows_per_sec_holds_a_backfill_to_its_rate() {
    let (rows, rate) = (6000, 3000);
    let (bridge, db) = with_unmirrored_rows("load_rate", rows);
    let started = Instant::now();
    let id = start_job(
        &bridge,
        &format!("{{\"chunk_rows\":500,\"max_rows_per_sec\":{rate}}}"),
    );
    let done = wait_state(&bridge, id, "done");
    let took = started.elapsed().as_secs_f64();
    assert_eq!(rows_done(&done), rows as i64, "{done}");
    // A lower bound only (the last chunk's pause ends at rows / rate), with some slack.
    let least = 0.9 * rows as f64 / rate as f64;
    assert!(took >= least, "{rows} rows at {rate}/s took {took:.2} s");
    wait_applied(&bridge);
    assert_equal(&db);
}
