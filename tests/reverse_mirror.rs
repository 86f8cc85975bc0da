//! The reverse mirror against real servers with the DXY schemas: writes to `data_bars` on the
//! secondary reach `derived_data_bars` on the primary as the rule maps them back, in commit
//! order, exactly once across applier kills, and after a primary that was down.

mod common;
mod sql_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pgbridge::config::PgUrl;
use pgbridge::mirror::reverse::{self, ReverseApplier, ReverseConfig, ReverseHandle};
use pgbridge::pgcluster::{PgOptions, PgServer};
use pgbridge::rules::RuleSet;
use sql_support::{dxy_pair, fresh_db, rows, url, DXY_RULES, SECONDARY_DDL};
use tokio_postgres::{Client, NoTls};

/// Both databases, connected, with the rule checked online and the capture enabled.
struct Pair {
    primary: Client,
    secondary: Client,
    primary_url: String,
    secondary_url: String,
    rules: Arc<ArcSwap<RuleSet>>,
}

impl Pair {
    /// The DXY pair on the shared server, the primary's sample rows removed.
    async fn new() -> Pair {
        let (p, s) = dxy_pair().await;
        Pair::with_urls(url(&p), url(&s)).await
    }

    async fn with_urls(primary_url: String, secondary_url: String) -> Pair {
        let primary = client(&primary_url).await;
        primary
            .batch_execute("TRUNCATE derived_data_bars")
            .await
            .unwrap();
        let secondary = client(&secondary_url).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dxy.toml");
        std::fs::write(&path, DXY_RULES).unwrap();
        let p: PgUrl = primary_url.parse().unwrap();
        let s: PgUrl = secondary_url.parse().unwrap();
        let set = pgbridge::rules::load_online(&path, &p, Some(&s))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        reverse::enable(&secondary, &set.rules()[0]).await.unwrap();
        // Twice: installing is idempotent.
        reverse::enable(&secondary, &set.rules()[0]).await.unwrap();
        Pair {
            primary,
            secondary,
            primary_url,
            secondary_url,
            rules: Arc::new(ArcSwap::from_pointee(set)),
        }
    }

    /// A reverse applier with pages of `page` changes.
    fn start(&self, page: i64) -> ReverseHandle {
        let mut cfg = ReverseConfig::new(
            self.primary_url.parse().unwrap(),
            self.secondary_url.parse().unwrap(),
        );
        cfg.page_size = page;
        ReverseApplier::spawn(cfg, self.rules.clone())
    }

    /// The primary's rows: `symbol hh:mm close volume`, in time order.
    async fn source_rows(&self) -> Vec<String> {
        let sql = "SELECT symbol || ' ' || to_char(ts AT TIME ZONE 'UTC', 'HH24:MI') || ' ' || \
                   close || ' ' || volume FROM derived_data_bars ORDER BY ts, symbol";
        // A connection of its own: the primary may have restarted since `self.primary`'s.
        rows(&client(&self.primary_url).await, sql)
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect()
    }

    async fn count(&self, client: &Client, sql: &str) -> i64 {
        client.query_one(sql, &[]).await.unwrap().get(0)
    }
}

async fn client(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// The transaction id of the client's open transaction.
async fn xid(c: &Client) -> i64 {
    let sql = "SELECT pg_current_xact_id()::text::bigint";
    c.query_one(sql, &[]).await.unwrap().get(0)
}

async fn drained(handle: &ReverseHandle) {
    let ok = handle.wait_drained(Duration::from_secs(30)).await;
    assert!(ok, "not drained: {:?}", handle.stats().report());
}

/// A target row at 14:`minute` owned by the rule unless `timeframe` or `synthetic` say not.
fn bar(minute: u32, timeframe: &str, close: &str, synthetic: bool) -> String {
    format!(
        "INSERT INTO data_bars (symbol, timeframe, ts, open, high, low, close_px, volume, \
         is_synthetic) VALUES ('DXY.IDX', '{timeframe}', '2026-01-05 14:{minute:02}+00', 1, 1, 1, \
         {close}, 10, {synthetic})"
    )
}

fn at(minute: u32) -> String {
    format!("ts = '2026-01-05 14:{minute:02}+00' AND timeframe = '1m'")
}

#[tokio::test]
async fn target_writes_reach_the_source_translated_and_only_the_rules_rows() {
    let pair = Pair::new().await;
    let s = &pair.secondary;
    for m in 30..34 {
        s.batch_execute(&bar(m, "1m", "1", true)).await.unwrap();
    }
    // Not the rule's rows: another timeframe, and not synthetic.
    s.batch_execute(&bar(30, "5m", "7", true)).await.unwrap();
    s.batch_execute(&bar(34, "1m", "7", false)).await.unwrap();
    let writes = [
        format!("UPDATE data_bars SET close_px = 2.5 WHERE {}", at(31)),
        format!(
            "UPDATE data_bars SET ts = '2026-01-05 14:40+00' WHERE {}",
            at(32)
        ),
        format!("DELETE FROM data_bars WHERE {}", at(30)),
        format!("UPDATE data_bars SET timeframe = '15m' WHERE {}", at(33)),
        "UPDATE data_bars SET close_px = 9 WHERE timeframe = '5m' OR NOT is_synthetic".into(),
        format!("BEGIN; {}; ROLLBACK", bar(50, "1m", "1", true)),
        format!(
            "SET pgbridge.origin = 'forward'; {}; RESET pgbridge.origin",
            bar(55, "1m", "1", true)
        ),
    ];
    for sql in writes {
        s.batch_execute(&sql).await.unwrap();
    }
    // 4 inserts, an update, a key change, a delete, a row leaving the rule.
    let queued = "SELECT count(*) FROM pgbridge.reverse_changes";
    assert_eq!(pair.count(s, queued).await, 8);
    // A change of a source no rule has (a rule since removed): it stays queued.
    s.batch_execute("INSERT INTO pgbridge.reverse_changes (source, new) VALUES ('gone', '{}')")
        .await
        .unwrap();

    let handle = pair.start(1000);
    drained(&handle).await;
    assert_eq!(
        pair.source_rows().await,
        ["DXY 14:31 2.500000 10", "DXY 14:40 1.000000 10"]
    );
    let report = handle.stats().report();
    assert_eq!(report.applied, 8, "{report:?}");
    assert_eq!((report.queued, report.lag_seconds), (0, 0.0), "{report:?}");
    assert!(report.primary_connected && report.secondary_connected);
    assert_eq!(report.unrouted, 1, "{report:?}");
    let left = "SELECT count(*) FROM pgbridge.reverse_changes WHERE source = 'gone'";
    assert_eq!(pair.count(s, queued).await, 1);
    assert_eq!(pair.count(s, left).await, 1);

    // Disabled: later writes are not queued; the applier keeps running idle.
    reverse::disable(s, &pair.rules.load().rules()[0])
        .await
        .unwrap();
    s.batch_execute(&bar(45, "1m", "1", true)).await.unwrap();
    assert_eq!(pair.count(s, queued).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_later_commit_wins_whatever_order_the_transactions_began_in() {
    let pair = Pair::new().await;
    for m in 31..35 {
        pair.secondary
            .batch_execute(&bar(m, "1m", "1", true))
            .await
            .unwrap();
    }
    let t1 = client(&pair.secondary_url).await;
    let t2 = client(&pair.secondary_url).await;
    // The applier stopped: both transactions land in one batch, T1's change with the larger seq.
    t1.batch_execute("BEGIN; INSERT INTO instruments VALUES ('X1', 'takes an xid')")
        .await
        .unwrap();
    let x1 = xid(&t1).await;
    t2.batch_execute(&format!(
        "BEGIN; UPDATE data_bars SET close_px = 2 WHERE {}",
        at(31)
    ))
    .await
    .unwrap();
    let x2 = xid(&t2).await;
    t2.batch_execute("COMMIT").await.unwrap();
    t1.batch_execute(&format!(
        "UPDATE data_bars SET close_px = 1.5 WHERE {}; COMMIT",
        at(31)
    ))
    .await
    .unwrap();
    assert!(x1 < x2, "T1 began first: {x1} {x2}");
    let handle = pair.start(1000);
    drained(&handle).await;
    assert_eq!(pair.source_rows().await[0], "DXY 14:31 1.500000 10");

    // The applier running: T2's commit is applied before T1 writes at all.
    t1.batch_execute("BEGIN; INSERT INTO instruments VALUES ('X2', 'takes an xid')")
        .await
        .unwrap();
    let set =
        |m: u32, close: &str| format!("UPDATE data_bars SET close_px = {close} WHERE {}", at(m));
    t2.batch_execute(&set(32, "2")).await.unwrap();
    drained(&handle).await;
    assert_eq!(pair.source_rows().await[1], "DXY 14:32 2.000000 10");
    t1.batch_execute(&format!("{}; COMMIT", set(32, "1.5")))
        .await
        .unwrap();
    drained(&handle).await;
    assert_eq!(pair.source_rows().await[1], "DXY 14:32 1.500000 10");

    // A change queued first but committed after a later one was applied is not skipped.
    t1.batch_execute(&format!("BEGIN; {}", set(33, "3")))
        .await
        .unwrap();
    t2.batch_execute(&set(34, "4")).await.unwrap();
    drained(&handle).await;
    let rows = pair.source_rows().await;
    assert_eq!(
        rows[2..],
        ["DXY 14:33 1.000000 10", "DXY 14:34 4.000000 10"]
    );
    t1.batch_execute("COMMIT").await.unwrap();
    drained(&handle).await;
    assert_eq!(pair.source_rows().await[2], "DXY 14:33 3.000000 10");
}

const APPLIED_LOG: &str = "CREATE TABLE applied_log (symbol text, ts timestamptz, op text); \
    CREATE FUNCTION log_applied() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
    IF TG_OP = 'DELETE' THEN INSERT INTO applied_log VALUES (OLD.symbol, OLD.ts, TG_OP); \
    ELSE INSERT INTO applied_log VALUES (NEW.symbol, NEW.ts, TG_OP); END IF; \
    RETURN NULL; END $$; \
    CREATE TRIGGER log_applied AFTER INSERT OR UPDATE OR DELETE ON derived_data_bars \
    FOR EACH ROW EXECUTE FUNCTION log_applied()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_applied_exactly_once_across_applier_kills() {
    let pair = Pair::new().await;
    pair.primary.batch_execute(APPLIED_LOG).await.unwrap();
    pair.secondary
        .batch_execute(
            "INSERT INTO data_bars (symbol, timeframe, ts, open, high, low, close_px, volume, \
             is_synthetic) SELECT 'DXY.IDX', '1m', timestamptz '2026-01-05 00:00+00' + \
             make_interval(mins => g), 1, 1, 1, g, g, true FROM generate_series(1, 300) AS g; \
             UPDATE data_bars SET close_px = close_px + 0.5; \
             DELETE FROM data_bars WHERE volume % 3 = 0",
        )
        .await
        .unwrap();
    // Killed four times, each time after some pages of 7 (the last kill may land anywhere in a
    // page: before, during or after its commit on the primary).
    for (i, after) in [20u64, 50, 3, 90].into_iter().enumerate() {
        let handle = pair.start(7);
        let deadline = Instant::now() + Duration::from_secs(30);
        while handle.stats().report().applied < after {
            assert!(
                Instant::now() < deadline,
                "kill {i}: {:?}",
                handle.stats().report()
            );
            tokio::time::sleep(Duration::from_millis(i as u64)).await;
        }
        drop(handle);
    }
    let handle = pair.start(7);
    drained(&handle).await;

    let p = &pair.primary;
    let ops = rows(
        p,
        "SELECT op, count(*) FROM applied_log GROUP BY op ORDER BY op",
    )
    .await;
    let ops: Vec<(String, String)> = ops
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    let expected = [("DELETE", "100"), ("INSERT", "300"), ("UPDATE", "300")];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(ops, expected);
    let twice = "SELECT count(*) FROM (SELECT 1 FROM applied_log GROUP BY symbol, ts, op \
                 HAVING count(*) > 1) AS d";
    assert_eq!(pair.count(p, twice).await, 0);
    let wrong = "SELECT count(*) FROM derived_data_bars WHERE symbol <> 'DXY' OR volume % 3 = 0 \
                 OR close <> volume + 0.5";
    assert_eq!(pair.count(p, wrong).await, 0);
    assert_eq!(
        pair.count(p, "SELECT count(*) FROM derived_data_bars")
            .await,
        200
    );
    let queued = "SELECT count(*) FROM pgbridge.reverse_changes";
    assert_eq!(pair.count(&pair.secondary, queued).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_queue_while_the_primary_is_down_and_all_arrive_after() {
    let mut server = PgServer::start(&PgOptions::default())
        .unwrap_or_else(|e| panic!("cannot start PostgreSQL for the tests: {e}"));
    let admin = client(&server.url("postgres", "postgres")).await;
    admin.batch_execute("CREATE DATABASE outage").await.unwrap();
    let primary_url = server.url("postgres", "outage");
    client(&primary_url)
        .await
        .batch_execute(sql_support::PRIMARY_DDL)
        .await
        .unwrap();
    let secondary = fresh_db("s", SECONDARY_DDL).await;
    let pair = Pair::with_urls(primary_url, url(&secondary)).await;
    let handle = pair.start(1000);
    for m in 0..10 {
        pair.secondary
            .batch_execute(&bar(m, "1m", "1", true))
            .await
            .unwrap();
    }
    drained(&handle).await;

    tokio::task::block_in_place(|| server.stop()).unwrap();
    let s = &pair.secondary;
    for m in 10..30 {
        s.batch_execute(&bar(m, "1m", "1", true)).await.unwrap();
    }
    s.batch_execute("UPDATE data_bars SET close_px = 2 WHERE ts < '2026-01-05 14:05+00'")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report = handle.stats().report();
        if !report.primary_connected && report.queued == 25 && report.lag_seconds > 0.0 {
            assert!(report.last_error.is_some(), "{report:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tokio::task::block_in_place(|| server.start_again()).unwrap();
    drained(&handle).await;
    let rows = pair.source_rows().await;
    assert_eq!(rows.len(), 30, "{rows:?}");
    assert_eq!(rows[4], "DXY 14:04 2.000000 10");
    assert_eq!(rows[5], "DXY 14:05 1.000000 10");
    let report = handle.stats().report();
    assert!(
        report.primary_connected && report.last_error.is_none(),
        "{report:?}"
    );
    assert_eq!(report.applied, 35, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_the_primary_commit_and_the_dequeue_applies_nothing_twice() {
    let pair = Pair::new().await;
    pair.primary.batch_execute(APPLIED_LOG).await.unwrap();
    pair.secondary
        .batch_execute(
            "INSERT INTO data_bars (symbol, timeframe, ts, open, high, low, close_px, volume, \
             is_synthetic) SELECT 'DXY.IDX', '1m', timestamptz '2026-01-05 00:00+00' + \
             make_interval(mins => g), 1, 1, 1, g, g, true FROM generate_series(1, 30) AS g",
        )
        .await
        .unwrap();
    // The queued rows locked: the applier's dequeue after its first page waits.
    let locker = client(&pair.secondary_url).await;
    locker
        .batch_execute("BEGIN; SELECT seq FROM pgbridge.reverse_changes FOR UPDATE")
        .await
        .unwrap();
    let handle = pair.start(7);
    let deadline = Instant::now() + Duration::from_secs(30);
    while handle.stats().report().applied < 7 {
        assert!(Instant::now() < deadline, "{:?}", handle.stats().report());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The page's position is counted before its dequeue is sent: wait until the dequeue waits
    // on the lock.
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                   AND query LIKE 'DELETE FROM pgbridge.reverse_changes%'";
    while pair.count(&locker, waiting).await != 1 {
        assert!(Instant::now() < deadline, "the dequeue never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Killed there: its dequeue never happens.
    drop(handle);
    let kill = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                WHERE query LIKE 'DELETE FROM pgbridge.reverse_changes%' AND pid <> pg_backend_pid()";
    assert_eq!(pair.count(&locker, kill).await, 1);
    locker.batch_execute("ROLLBACK").await.unwrap();
    let queued = "SELECT count(*) FROM pgbridge.reverse_changes";
    assert_eq!(pair.count(&pair.secondary, queued).await, 30);

    let handle = pair.start(7);
    drained(&handle).await;
    assert_eq!(handle.stats().report().applied, 23);
    let p = &pair.primary;
    let log = "SELECT count(*) FROM applied_log WHERE op = 'INSERT'";
    assert_eq!(pair.count(p, log).await, 30);
    assert_eq!(pair.count(p, "SELECT count(*) FROM applied_log").await, 30);
    assert_eq!(pair.count(&pair.secondary, queued).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forward_mirrors_writes_are_not_queued_back() {
    use common::dxy;
    let c = common::cluster();
    let db = common::fresh_db("reverse");
    let (bridge, db) = dxy::mirrored_with(c.primary_port, c.secondary_port, &db, dxy::DXY_RULE, "");
    // A first write applied: the forward applier is connected and its schema is there.
    let through = client(&bridge.conn_str("postgres", "", &db)).await;
    let insert = |minute: u32| {
        format!(
            "{} ('DXY', '2026-01-05 15:{minute:02}+00', 1, 1, 1, 1, 5)",
            dxy::INSERT
        )
    };
    through.batch_execute(&insert(0)).await.unwrap();
    tokio::task::block_in_place(|| dxy::wait_applied(&bridge));

    let url = format!("postgres://postgres@127.0.0.1:{}/{db}", c.secondary_port);
    let secondary = client(&url).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dxy.toml"), DXY_RULES).unwrap();
    let rules = pgbridge::rules::load_offline(&dir.path().join("dxy.toml")).unwrap();
    reverse::enable(&secondary, &rules.rules()[0])
        .await
        .unwrap();
    through.batch_execute(&insert(1)).await.unwrap();
    tokio::task::block_in_place(|| dxy::wait_applied(&bridge));

    let count = |sql: &'static str| {
        let secondary = &secondary;
        async move {
            secondary
                .query_one(sql, &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count("SELECT count(*) FROM data_bars").await, 2);
    let queued = "SELECT count(*) FROM pgbridge.reverse_changes";
    assert_eq!(count(queued).await, 0);
    // The application's own write on the secondary is queued.
    secondary
        .batch_execute(&bar(1, "1m", "1", true))
        .await
        .unwrap();
    assert_eq!(count(queued).await, 1);
}
