//! Route decisions on analyses of real DXY statements (rules checked against real schemas).

mod sql_support;

use std::sync::Arc;

use arc_swap::ArcSwap;
use pgbridge::divergence::Recorder;
use pgbridge::reads::{route, FlagOptions, ReadFlags, Route, SharedTables};
use pgbridge::rules::{ReadSource, TableName};

struct Fixture {
    analyzer: pgbridge::sql::Analyzer,
    flags: ReadFlags,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let (p, s) = sql_support::dxy_pair().await;
    let rules = sql_support::ruleset(&p, &s, sql_support::DXY_RULES).await;
    let live = Arc::new(ArcSwap::from_pointee(rules));
    let analyzer = pgbridge::sql::Analyzer::new(live.clone(), 100);
    let dir = tempfile::tempdir().unwrap();
    let recorder = Arc::new(Recorder::open_path(&dir.path().join("d.jsonl"), true).unwrap());
    let opts = FlagOptions {
        audit_log: dir.path().join("audit.jsonl"),
        max_lag_seconds: 5.0,
        max_lag_transactions: 0,
        has_secondary: true,
        shadow_window_secs: 900,
        max_shadow_mismatch_rate: 0.0,
    };
    Fixture {
        analyzer,
        flags: ReadFlags::new(live, opts, recorder, None),
        _dir: dir,
    }
}

impl Fixture {
    fn set(&self, source: ReadSource) {
        // No mirror runs here: the gate would refuse secondary.
        self.flags
            .set("derived_data_bars", source, 100, "test", "test", true)
            .unwrap();
    }

    fn route(&self, sql: &str, shared: &SharedTables, in_write_txn: bool) -> String {
        let analysis = self.analyzer.analyze(sql);
        let flags = self.flags.load();
        match route(&analysis, &flags, shared, in_write_txn, 0) {
            Route::Primary => "primary".into(),
            Route::Shadow { sql, table } => {
                assert_eq!(*table, TableName::new("public", "derived_data_bars"));
                assert!(sql.contains("data_bars"), "{sql}");
                "shadow".into()
            }
            Route::Secondary { sql } => {
                assert!(sql.contains("data_bars"), "{sql}");
                "secondary".into()
            }
        }
    }
}

const READ: &str = "SELECT ts, close FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts";
const JOIN: &str = "SELECT b.ts, i.description FROM derived_data_bars b \
                    JOIN instruments i ON i.symbol = b.symbol WHERE b.symbol = 'DXY'";

#[tokio::test]
async fn reads_follow_the_flag() {
    let f = fixture().await;
    let shared = SharedTables::new(&["instruments".into()]);
    assert_eq!(f.route(READ, &shared, false), "primary");
    f.set(ReadSource::Shadow);
    assert_eq!(f.route(READ, &shared, false), "shadow");
    f.set(ReadSource::Secondary);
    assert_eq!(f.route(READ, &shared, false), "secondary");
    // Aggregates, CTEs and subqueries of the migrated table only.
    for sql in [
        "SELECT count(*), max(close) FROM derived_data_bars WHERE symbol = 'DXY'",
        "WITH b AS (SELECT * FROM derived_data_bars WHERE symbol = 'DXY') SELECT count(*) FROM b",
        "SELECT * FROM derived_data_bars WHERE symbol = 'DXY' AND ts = \
         (SELECT max(ts) FROM derived_data_bars d WHERE d.symbol = 'DXY')",
        // Bound to 'DXY' or not: the session checks the value at Bind.
        "SELECT * FROM derived_data_bars WHERE symbol = $1 AND ts > $2",
    ] {
        assert_eq!(f.route(sql, &shared, false), "secondary", "{sql}");
    }
    let analysis = f
        .analyzer
        .analyze("SELECT * FROM derived_data_bars WHERE symbol = $1 AND ts > $2");
    // One check, of $1: it holds for 'DXY' (text or binary, a text's bytes) and nothing else.
    assert_eq!(analysis.read_params().len(), 1);
    let bound = |v: &'static [u8], format: u16| {
        move |n: usize| {
            (n == 1).then_some(pgbridge::sql::read::Bound {
                format,
                type_oid: 0,
                value: Some(v),
            })
        }
    };
    assert!(analysis.read_params_hold(bound(b"DXY", 0)));
    assert!(analysis.read_params_hold(bound(b"DXY", 1)));
    assert!(!analysis.read_params_hold(bound(b"EUR", 0)));
    assert!(!analysis.read_params_hold(|_| None));
    // The secondary has the rule's rows only: a read beyond the rule's `where` is the primary's.
    for sql in [
        "SELECT * FROM derived_data_bars ORDER BY ts",
        "SELECT count(*) FROM derived_data_bars WHERE volume > 0",
        "SELECT * FROM derived_data_bars WHERE symbol = 'DXY' OR volume > 0",
        "SELECT * FROM derived_data_bars WHERE symbol = 'DXY' AND ts = \
         (SELECT max(ts) FROM derived_data_bars)",
        "SELECT * FROM derived_data_bars a JOIN derived_data_bars b USING (ts) WHERE a.symbol = 'DXY'",
    ] {
        assert_eq!(f.route(sql, &shared, false), "primary", "{sql}");
    }
}

#[tokio::test]
async fn joins_need_the_other_table_shared() {
    let f = fixture().await;
    f.set(ReadSource::Secondary);
    let shared = SharedTables::new(&["instruments".into()]);
    assert_eq!(f.route(JOIN, &shared, false), "secondary");
    assert_eq!(f.route(JOIN, &SharedTables::None, false), "primary");
    assert_eq!(
        f.route(JOIN, &SharedTables::new(&["*".into()]), false),
        "secondary"
    );
    f.set(ReadSource::Shadow);
    assert_eq!(f.route(JOIN, &shared, false), "shadow");
    assert_eq!(f.route(JOIN, &SharedTables::None, false), "primary");
}

#[tokio::test]
async fn writes_written_transactions_and_the_unknown_stay_on_the_primary() {
    let f = fixture().await;
    f.set(ReadSource::Secondary);
    let shared = SharedTables::new(&["instruments".into()]);
    for sql in [
        "UPDATE derived_data_bars SET volume = 1 WHERE symbol = 'DXY'",
        "INSERT INTO derived_data_bars SELECT * FROM derived_data_bars",
        "DELETE FROM derived_data_bars",
        // sqlparser rejects it: not understood, so the primary.
        "SELECT * FROM derived_data_bars FOR NO KEY UPDATE",
        // A function that might write.
        "SELECT my_func(close) FROM derived_data_bars",
        // Two statements in one Query.
        "SELECT 1 FROM derived_data_bars; SELECT 2",
        // No migrated table at all.
        "SELECT * FROM instruments",
        "SELECT 1",
    ] {
        assert_eq!(f.route(sql, &shared, false), "primary", "{sql}");
    }
    // Inside a transaction that has written: the primary, for shadow too.
    assert_eq!(f.route(READ, &shared, true), "primary");
    f.set(ReadSource::Shadow);
    assert_eq!(f.route(READ, &shared, true), "primary");
}
