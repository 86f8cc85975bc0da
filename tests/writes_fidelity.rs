//! The write switch's fidelity run: six sessions write the DXY table through pgbridge in every
//! shape (simple and prepared INSERT with RETURNING, upserts, updates of values and of keys,
//! deletes, savepoints rolled back, COPY FROM, several statements in one Query) while the
//! writes move to the target, pgbridge is SIGKILLed and restarted, the database is stopped for
//! a few seconds, and the writes move back. Each session keeps a model of its own rows and
//! checks every reply against it (rows returned, rows counted); a statement whose outcome a
//! lost connection hid is settled by reading its keys again. At the end the legacy table and
//! the target both hold exactly the union of the models.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::dxy::status;
use common::writes::*;
use common::*;
use tokio_postgres::{Client, SimpleQueryMessage};

const SESSIONS: i64 = 6;
/// Keys of one session: `[s * SPAN, s * SPAN + SPAN)`; a key change adds `MOVE`.
const SPAN: i64 = 1_000_000;
const MOVE: i64 = 500_000;
/// Where keys that an op may find absent start (fresh keys stay below).
const ABSENT: i64 = 400_000;

/// A key's timestamp literal: seconds after 2026-01-01.
fn ts(k: i64) -> String {
    format!("'2026-01-01 00:00:00+00'::timestamptz + {k} * interval '1 second'")
}

/// What one session believes it wrote: key → (close, volume).
type Model = BTreeMap<i64, (i64, i64)>;

struct Session {
    conn: String,
    me: i64,
    model: Model,
    next: i64,
    rng: u64,
    ops: u64,
    settled: u64,
    /// The writes are on the secondary: COPY is written then only, because the forward mirror
    /// does not capture an extended-protocol COPY (it marks the table for a repair, and the
    /// write switch refuses a marked table).
    switched: Arc<AtomicBool>,
}

enum Op {
    Insert(i64, i64),
    Prepared(i64, i64),
    Upsert(i64, i64),
    Update(i64, i64),
    MoveKey(i64),
    Delete(i64),
    Savepoint(i64, i64),
    Copy(i64),
    Pipeline(i64, i64),
}

impl Session {
    fn rand(&mut self, n: u64) -> u64 {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.rng >> 33) % n
    }

    fn fresh_key(&mut self) -> i64 {
        self.next += 1;
        self.me * SPAN + self.next
    }

    fn some_key(&mut self) -> i64 {
        if self.model.is_empty() || self.rand(5) == 0 {
            // Keys no fresh key reaches: an upsert may insert one, the others are absent.
            return self.me * SPAN + ABSENT + self.rand(50) as i64;
        }
        let i = self.rand(self.model.len() as u64) as usize;
        *self.model.keys().nth(i).unwrap()
    }

    fn pick(&mut self) -> Op {
        let c = self.rand(1000) as i64;
        match self.rand(10) {
            0 | 1 => Op::Insert(self.fresh_key(), c),
            2 => Op::Prepared(self.fresh_key(), c),
            3 => Op::Upsert(self.some_key(), c),
            4 => Op::Update(self.some_key(), c),
            5 => Op::MoveKey(self.some_key()),
            6 => Op::Delete(self.some_key()),
            7 => Op::Savepoint(self.fresh_key(), self.fresh_key()),
            8 if self.switched.load(Ordering::Relaxed) => Op::Copy(self.fresh_key()),
            8 => Op::Insert(self.fresh_key(), c),
            _ => Op::Pipeline(self.some_key(), self.some_key()),
        }
    }

    /// The keys an op touches (to settle it after a lost connection).
    fn keys(op: &Op) -> Vec<i64> {
        match *op {
            Op::Insert(k, _) | Op::Prepared(k, _) | Op::Upsert(k, _) | Op::Update(k, _) => vec![k],
            Op::MoveKey(k) => vec![k, k + MOVE],
            Op::Delete(k) => vec![k],
            Op::Savepoint(a, b) => vec![a, b],
            Op::Copy(k) => vec![k, k + 1, k + 2],
            Op::Pipeline(a, b) => vec![a, b],
        }
    }
}

fn counts(msgs: &[SimpleQueryMessage]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

/// Runs `op`, checks the replies against the model and updates it; `Err` when the connection
/// was lost (the outcome is unknown).
async fn run(s: &mut Session, c: &Client, op: &Op) -> Result<(), tokio_postgres::Error> {
    let has = |m: &Model, k: i64| m.contains_key(&k);
    match *op {
        Op::Insert(k, close) => {
            let rows = c
                .query(
                    &format!("INSERT INTO derived_data_bars VALUES ('DXY', {}, 1, 1, 1, {close}, {k}) RETURNING volume", ts(k)),
                    &[],
                )
                .await?;
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].get::<_, i64>(0), k);
            s.model.insert(k, (close, k));
        }
        Op::Prepared(k, close) => {
            let st = c
                .prepare("INSERT INTO derived_data_bars (symbol, ts, open, high, low, close, volume) \
                          VALUES ('DXY', '2026-01-01 00:00:00+00'::timestamptz + $1::int8 * interval '1 second', 1, 1, 1, $2::int8, $1::int8)")
                .await?;
            assert_eq!(c.execute(&st, &[&k, &close]).await?, 1);
            s.model.insert(k, (close, k));
        }
        Op::Upsert(k, close) => {
            let n = c
                .execute(
                    &format!(
                        "INSERT INTO derived_data_bars VALUES ('DXY', {}, 1, 1, 1, {close}, {k}) \
                              ON CONFLICT (symbol, ts) DO UPDATE SET close = EXCLUDED.close",
                        ts(k)
                    ),
                    &[],
                )
                .await?;
            assert_eq!(n, 1);
            let volume = s.model.get(&k).map_or(k, |r| r.1);
            s.model.insert(k, (close, volume));
        }
        Op::Update(k, close) => {
            let msgs = c
                .simple_query(&format!(
                    "UPDATE derived_data_bars SET close = {close} WHERE symbol = 'DXY' AND ts = {}",
                    ts(k)
                ))
                .await?;
            if counts(&msgs) != vec![has(&s.model, k) as u64] {
                panic!("update {k}: {:?} {}", counts(&msgs), dump(k));
            }
            if let Some(r) = s.model.get_mut(&k) {
                r.0 = close;
            }
        }
        Op::MoveKey(k) => {
            let movable = has(&s.model, k) && k % SPAN < MOVE && !has(&s.model, k + MOVE);
            if !movable {
                return Ok(());
            }
            let n = c
                .execute(
                    &format!("UPDATE derived_data_bars SET ts = ts + interval '{MOVE} seconds' WHERE symbol = 'DXY' AND ts = {}", ts(k)),
                    &[],
                )
                .await?;
            if n != 1 {
                panic!("move {k}: {n} {}", dump(k));
            }
            let r = s.model.remove(&k).unwrap();
            s.model.insert(k + MOVE, r);
        }
        Op::Delete(k) => {
            let rows = c
                .query(
                    &format!("DELETE FROM derived_data_bars WHERE symbol = 'DXY' AND ts = {} RETURNING close::int8", ts(k)),
                    &[],
                )
                .await?;
            let expected: Vec<i64> = s.model.get(&k).map(|r| r.0).into_iter().collect();
            let got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            if got != expected {
                let (port, db) = DIRECT.get().unwrap();
                let q = format!("SELECT 'source', * FROM derived_data_bars WHERE ts = {t} UNION ALL SELECT 'target', symbol, ts, open, high, low, close_px, volume FROM data_bars WHERE ts = {t}", t = ts(k));
                panic!("delete {k}: got {got:?}, expected {expected:?}; now:\n{}\n{}", psql_on(*port, db, &q), psql_on(*port, db, "SELECT seq, source, xid, old, new FROM pgbridge.reverse_changes ORDER BY seq LIMIT 5"));
            }
            s.model.remove(&k);
        }
        Op::Savepoint(a, b) => {
            c.batch_execute(&format!(
                "BEGIN; INSERT INTO derived_data_bars VALUES ('DXY', {}, 1, 1, 1, 5, {a}); SAVEPOINT s; \
                 INSERT INTO derived_data_bars VALUES ('DXY', {}, 1, 1, 1, 6, {b}); ROLLBACK TO s; COMMIT",
                ts(a),
                ts(b)
            ))
            .await?;
            s.model.insert(a, (5, a));
        }
        Op::Copy(k) => {
            let sink = c.copy_in("COPY derived_data_bars (symbol, ts, open, high, low, close, volume) FROM STDIN").await?;
            let mut data = String::new();
            for i in 0..3 {
                data.push_str(&format!("DXY\t{}\t1\t1\t1\t7\t{}\n", copy_ts(k + i), k + i));
            }
            use futures_util::SinkExt;
            let mut sink = Box::pin(sink);
            sink.send(bytes::Bytes::from(data)).await?;
            assert_eq!(sink.as_mut().finish().await?, 3);
            for i in 0..3 {
                s.model.insert(k + i, (7, k + i));
            }
            s.next += 2;
        }
        Op::Pipeline(a, b) => {
            if a == b {
                return Ok(());
            }
            let msgs = c
                .simple_query(&format!(
                    "UPDATE derived_data_bars SET volume = volume + 1 WHERE symbol = 'DXY' AND ts = {}; \
                     DELETE FROM derived_data_bars WHERE symbol = 'DXY' AND ts = {}",
                    ts(a),
                    ts(b)
                ))
                .await?;
            if counts(&msgs) != vec![has(&s.model, a) as u64, has(&s.model, b) as u64] {
                panic!(
                    "pipeline {a} {b}: {:?} {}{}",
                    counts(&msgs),
                    dump(a),
                    dump(b)
                );
            }
            if let Some(r) = s.model.get_mut(&a) {
                r.1 += 1;
            }
            s.model.remove(&b);
        }
    }
    Ok(())
}

/// Key `k`'s timestamp as COPY's text input (2026-01-01 is 1767225600 in Unix time).
fn copy_ts(k: i64) -> String {
    let unix = 1_767_225_600 + k;
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Days to a civil date (proleptic Gregorian), after H. Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y}-{m:02}-{d:02} {:02}:{:02}:{:02}+00",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Settles the keys of an op whose outcome a lost connection hid: the model takes what the
/// table (as pgbridge serves it) holds now.
async fn settle(s: &mut Session, c: &Client, keys: &[i64]) -> Result<(), tokio_postgres::Error> {
    for &k in keys {
        let rows = c
            .query(
                &format!("SELECT close::int8, volume FROM derived_data_bars WHERE symbol = 'DXY' AND ts = {}", ts(k)),
                &[],
            )
            .await?;
        match rows.first() {
            Some(r) => s.model.insert(k, (r.get(0), r.get(1))),
            None => s.model.remove(&k),
        };
        if k % SPAN < ABSENT {
            s.next = s.next.max(k % SPAN);
        }
    }
    s.settled += 1;
    Ok(())
}

async fn session(mut s: Session, stop: Arc<AtomicBool>) -> Session {
    let mut unsettled: Option<Vec<i64>> = None;
    while !stop.load(Ordering::Relaxed) {
        let Ok((c, conn)) = tokio_postgres::connect(&s.conn, tokio_postgres::NoTls).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(conn);
        if let Some(keys) = unsettled.take() {
            if settle(&mut s, &c, &keys).await.is_err() {
                unsettled = Some(keys);
                continue;
            }
        }
        while !stop.load(Ordering::Relaxed) {
            let op = s.pick();
            match run(&mut s, &c, &op).await {
                Ok(()) => s.ops += 1,
                Err(e)
                    if e.is_closed()
                        || e.as_db_error()
                            .is_none_or(|d| is_connection_loss(d.code().code())) =>
                {
                    unsettled = Some(Session::keys(&op));
                    break;
                }
                Err(e) => panic!("session {}: unexpected error {e:?}", s.me),
            }
        }
    }
    if let Some(keys) = unsettled {
        let c = connect(&s.conn).await;
        settle(&mut s, &c, &keys).await.unwrap();
    }
    s
}

/// The SQLSTATEs of a session that lost its server: admin shutdown, connection failure.
fn is_connection_loss(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P")
}

#[test]
fn copy_timestamps_are_the_keys_seconds() {
    assert_eq!(copy_ts(0), "2026-01-01 00:00:00+00");
    assert_eq!(copy_ts(86_400 * 59 + 3_661), "2026-03-01 01:01:01+00");
}

static DIRECT: std::sync::OnceLock<(u16, String)> = std::sync::OnceLock::new();

fn dump(k: i64) -> String {
    let (port, db) = DIRECT.get().unwrap();
    let q = format!("SELECT 'source', * FROM derived_data_bars WHERE ts = {t} UNION ALL SELECT 'target', symbol, ts, open, high, low, close_px, volume FROM data_bars WHERE ts = {t}", t = ts(k));
    psql_on(*port, db, &q)
}

static PHASE: std::sync::Mutex<&str> = std::sync::Mutex::new("start");

fn phase(name: &'static str) {
    eprintln!("phase: {name}");
    *PHASE.lock().unwrap() = name;
}

fn pause(d: Duration) {
    std::thread::sleep(d);
}

#[test]
fn every_write_shape_survives_both_switches_a_kill_and_a_stopped_database() {
    let mut server = start_server();
    let port = server.port();
    let db = "fidelity";
    psql_on(port, "postgres", &format!("CREATE DATABASE {db}"));
    let mut bridge = one_database_on(port, db);
    let _ = DIRECT.set((port, db.to_string()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let switched = Arc::new(AtomicBool::new(false));
    let conn = bridge.conn_str("postgres", "", db);
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|me| {
            let s = Session {
                conn: conn.clone(),
                me,
                model: Model::new(),
                next: 0,
                rng: 0x9e3779b97f4a7c15 ^ me as u64,
                ops: 0,
                settled: 0,
                switched: switched.clone(),
            };
            rt.spawn(session(s, stop.clone()))
        })
        .collect();

    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("(during phase {})", PHASE.lock().map(|p| *p).unwrap_or("?"));
        default(info)
    }));
    phase("writes on the primary");
    pause(Duration::from_secs(3));
    phase("switching to the secondary");
    let (code, answer) = put_writes(
        &bridge,
        r#"{"target":"secondary","force":true,"timeout_ms":10000}"#,
    );
    switched.store(true, Ordering::Relaxed);
    phase("writes on the secondary");
    assert_eq!(code, 200, "{answer}");
    eprintln!("to secondary: writes held {} ms", answer["paused_ms"]);
    pause(Duration::from_secs(3));
    phase("pgbridge killed");
    bridge.signal(9);
    bridge.wait_exit(Duration::from_secs(5));
    bridge.restart();
    phase("pgbridge restarted");
    pause(Duration::from_secs(2));
    phase("database stopped");
    server.stop().unwrap();
    pause(Duration::from_secs(3));
    server.start_again().unwrap();
    phase("database started");
    pause(Duration::from_secs(3));
    phase("switching back");
    switched.store(false, Ordering::Relaxed);
    pause(Duration::from_millis(500));
    let (code, answer) = put_writes(&bridge, r#"{"target":"primary","timeout_ms":10000}"#);
    phase("writes on the primary again");
    assert_eq!(code, 200, "{answer}");
    eprintln!("back to primary: writes held {} ms", answer["paused_ms"]);
    pause(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let sessions: Vec<Session> = tasks.into_iter().map(|t| rt.block_on(t).unwrap()).collect();

    let mut expected = Model::new();
    for s in &sessions {
        eprintln!(
            "session {}: {} ops, {} settled after a lost connection, {} rows",
            s.me,
            s.ops,
            s.settled,
            s.model.len()
        );
        assert!(s.ops > 50, "session {} made too little progress", s.me);
        expected.extend(s.model.iter().map(|(k, v)| (*k, *v)));
    }
    assert_images_equal(&bridge, port, db);
    let rows = psql_on(
        port,
        db,
        "SELECT extract(epoch FROM ts - '2026-01-01 00:00:00+00')::int8, close::int8, volume \
         FROM derived_data_bars ORDER BY 1",
    );
    let actual: Model = rows
        .lines()
        .map(|l| {
            let f: Vec<i64> = l.split('|').map(|x| x.trim().parse().unwrap()).collect();
            (f[0], (f[1], f[2]))
        })
        .collect();
    assert_eq!(actual.len(), expected.len());
    assert!(
        actual == expected,
        "the legacy table is not what the clients wrote"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_shape_alone_after_the_switch() {
    let (bridge, db) = one_database("fidelity_alone");
    let c = connect(&bridge.conn_str("postgres", "", &db)).await;
    let mut s = Session {
        conn: String::new(),
        me: 1,
        model: Model::new(),
        next: 0,
        rng: 7,
        ops: 0,
        settled: 0,
        switched: Arc::new(AtomicBool::new(false)),
    };
    for i in 0..300 {
        if i == 100 {
            s.switched.store(true, Ordering::Relaxed);
            let (code, answer) = put_writes(&bridge, r#"{"target":"secondary","force":true}"#);
            assert_eq!(code, 200, "{answer}");
            let port = cluster().primary_port;
            let target = psql_on(port, &db, "SELECT count(*) FROM data_bars");
            let log: Vec<String> = bridge
                .log()
                .lines()
                .filter(|l| l.contains("drain") || l.contains("WARN") || l.contains("ERROR"))
                .map(String::from)
                .collect();
            assert_eq!(
                target.trim().parse::<usize>().unwrap(),
                s.model.len(),
                "right after the switch: {log:#?} {}",
                status(&bridge)
            );
        }
        let op = s.pick();
        let name = format!("op {i}: {}", op_name(&op));
        run(&mut s, &c, &op)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let rows = c
            .query(
                "SELECT count(*) FROM derived_data_bars WHERE symbol = 'DXY'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            rows[0].get::<_, i64>(0) as usize,
            s.model.len(),
            "after {name}"
        );
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Insert(..) => "insert",
        Op::Prepared(..) => "prepared",
        Op::Upsert(..) => "upsert",
        Op::Update(..) => "update",
        Op::MoveKey(..) => "move",
        Op::Delete(..) => "delete",
        Op::Savepoint(..) => "savepoint",
        Op::Copy(..) => "copy",
        Op::Pipeline(..) => "pipeline",
    }
}
