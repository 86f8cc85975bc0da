//! What the analyzer says about each kind of statement, and the exact text the primary gets.

mod sql_support;

use std::sync::Arc;

use arc_swap::ArcSwap;
use pgbridge::rules::{RuleSet, TableName};
use pgbridge::sql::{Analyzer, Kind, SessionOp, SetKind, TxControl, WriteOp};

fn analyzer() -> Analyzer {
    Analyzer::new(
        Arc::new(ArcSwap::from_pointee(sql_support::dxy_checked_rules())),
        100,
    )
}

fn dxy() -> TableName {
    TableName::new("public", "derived_data_bars")
}

#[test]
fn unrelated_statements_skip_the_parser() {
    let a = analyzer();
    let analysis = a.analyze("SELECT id, name FROM users WHERE id = $1");
    assert!(analysis.statements.is_empty() && analysis.seen.is_empty());
    assert!(!analysis.writes_migrated());
}

#[test]
fn reads_and_writes_of_migrated_tables() {
    let a = analyzer();
    let kind = |sql: &str| {
        let an = a.analyze(sql);
        (
            an.statements[0].kind.clone(),
            an.statements[0].writes.first().map(|w| (w.op, w.nested)),
        )
    };
    assert_eq!(kind("SELECT * FROM Derived_Data_Bars"), (Kind::Read, None));
    assert_eq!(
        kind("SELECT * FROM x WHERE y IN (SELECT symbol FROM public.derived_data_bars)"),
        (Kind::Read, None)
    );
    assert_eq!(
        kind("INSERT INTO derived_data_bars VALUES ('DXY', now(), 1, 1, 1, 1)"),
        (Kind::Write, Some((WriteOp::Insert, false)))
    );
    assert_eq!(
        kind("INSERT INTO derived_data_bars SELECT * FROM y"),
        (Kind::Write, Some((WriteOp::InsertSelect, false)))
    );
    assert_eq!(
        kind("INSERT INTO derived_data_bars VALUES ('a') ON CONFLICT DO NOTHING"),
        (Kind::Write, Some((WriteOp::Upsert, false)))
    );
    assert_eq!(
        kind("UPDATE \"derived_data_bars\" SET close = 1"),
        (Kind::Write, Some((WriteOp::Update, false)))
    );
    assert_eq!(
        kind("DELETE FROM derived_data_bars"),
        (Kind::Write, Some((WriteOp::Delete, false)))
    );
    assert_eq!(
        kind("TRUNCATE derived_data_bars"),
        (Kind::Write, Some((WriteOp::Truncate, false)))
    );
    assert_eq!(
        kind("COPY derived_data_bars FROM STDIN"),
        (Kind::Write, Some((WriteOp::CopyFrom, false)))
    );
    assert_eq!(
        kind("COPY derived_data_bars TO STDOUT"),
        (Kind::Other, None)
    );
    assert_eq!(
        kind("MERGE INTO derived_data_bars d USING src s ON d.ts = s.ts WHEN MATCHED THEN DELETE"),
        (Kind::Write, Some((WriteOp::Merge, false)))
    );
    assert_eq!(
        kind("WITH gone AS (DELETE FROM derived_data_bars WHERE ts < now() RETURNING *) SELECT count(*) FROM gone"),
        (Kind::Write, Some((WriteOp::Delete, true)))
    );
    assert_eq!(
        kind("ALTER TABLE derived_data_bars ADD COLUMN x int"),
        (Kind::Ddl, None)
    );
    assert_eq!(kind("DROP TABLE derived_data_bars"), (Kind::Ddl, None));
    assert_eq!(
        kind("CREATE INDEX ON derived_data_bars (ts)"),
        (Kind::Ddl, None)
    );
    assert_eq!(
        kind("WITH derived_data_bars AS (SELECT 1) SELECT * FROM derived_data_bars"),
        (Kind::Other, None)
    );
}

#[test]
fn other_tables_are_listed_for_the_router() {
    let a = analyzer();
    let an = a.analyze(
        "WITH recent AS (SELECT * FROM derived_data_bars) SELECT * FROM recent r JOIN instruments i USING (symbol) JOIN ref.venues v ON true",
    );
    let info = &an.statements[0];
    assert_eq!(info.reads, [dxy()]);
    assert_eq!(
        info.others,
        [
            TableName::new("public", "instruments"),
            TableName::new("ref", "venues")
        ]
    );
}

#[test]
fn functions_that_may_write_keep_a_read_on_the_primary() {
    let a = analyzer();
    let safe = a.analyze("SELECT max(close) FROM derived_data_bars WHERE symbol = 'DXY'");
    assert!(!safe.statements[0].may_write && safe.read_rewrite().is_some());
    let risky = a.analyze("SELECT audit_log(symbol) FROM derived_data_bars");
    assert!(risky.statements[0].may_write && risky.read_rewrite().is_none());
    let locking = a.analyze("SELECT * FROM derived_data_bars WHERE ts = $1 FOR UPDATE");
    assert_eq!(locking.statements[0].kind, Kind::Read);
    assert!(locking.statements[0].may_write && locking.read_rewrite().is_none());
}

#[test]
fn transaction_control_and_session_state() {
    let a = analyzer();
    let kinds = |sql: &str| -> Vec<Kind> {
        a.analyze(sql)
            .statements
            .iter()
            .map(|s| s.kind.clone())
            .collect()
    };
    assert_eq!(kinds("BEGIN"), [Kind::Transaction(TxControl::Begin(None))]);
    assert_eq!(
        kinds("SAVEPOINT s1"),
        [Kind::Transaction(TxControl::Savepoint("s1".into()))]
    );
    assert_eq!(
        kinds("ROLLBACK TO SAVEPOINT s1"),
        [Kind::Transaction(TxControl::RollbackTo("s1".into()))]
    );
    assert_eq!(
        kinds("PREPARE TRANSACTION 'g1'"),
        [Kind::Transaction(TxControl::PrepareTransaction(
            "g1".into()
        ))]
    );
    assert_eq!(
        kinds("COMMIT PREPARED 'g1'"),
        [Kind::Transaction(TxControl::CommitPrepared("g1".into()))]
    );
    assert_eq!(
        kinds("SET TimeZone = 'UTC'"),
        [Kind::Session(SessionOp::Set(SetKind::Setting(
            "timezone".into()
        )))]
    );
    assert_eq!(
        kinds("DISCARD ALL"),
        [Kind::Session(SessionOp::Discard { all: true })]
    );
    assert_eq!(
        kinds("DEALLOCATE ALL"),
        [Kind::Session(SessionOp::Deallocate(None))]
    );
    assert_eq!(
        kinds("BEGIN; DELETE FROM derived_data_bars WHERE ts < now(); COMMIT"),
        [
            Kind::Transaction(TxControl::Begin(None)),
            Kind::Write,
            Kind::Transaction(TxControl::Commit)
        ]
    );
    assert_eq!(
        kinds("SELECT 1; COMMIT"),
        [Kind::Other, Kind::Transaction(TxControl::Commit)]
    );
    let prepared = a.analyze("PREPARE ins AS INSERT INTO derived_data_bars VALUES ($1)");
    assert_eq!(
        prepared.statements[0].kind,
        Kind::Session(SessionOp::Prepare("ins".into()))
    );
    assert_eq!(prepared.statements[0].writes[0].table, dxy());
}

#[test]
fn a_statement_the_parser_rejects_keeps_the_tables_seen() {
    let a = analyzer();
    let an = a.analyze("DO $$ BEGIN DELETE FROM derived_data_bars; END $$");
    assert!(an.parse_error.is_some());
    assert_eq!(an.statements[0].kind, Kind::Unparsed);
    assert_eq!(an.statements[0].reads, [dxy()]);
    assert!(an.writes_migrated());
    let an = a.analyze("SELECT * FROM derived_data_bars FOR NO KEY UPDATE");
    assert_eq!(an.statements[0].kind, Kind::Unparsed);
}

#[test]
fn the_capture_splices_into_the_original_text() {
    let a = analyzer();
    let sql = "insert into Derived_Data_Bars (symbol, ts, open, high, low, close)\n  values ('DXY', now(), 1, 1, 1, 1) /* keep me */ ;";
    let an = a.analyze(sql);
    assert_eq!(
        an.capture_sql.as_deref().unwrap(),
        "insert into Derived_Data_Bars (symbol, ts, open, high, low, close)\n  values ('DXY', now(), 1, 1, 1, 1) \
         RETURNING Derived_Data_Bars.symbol, Derived_Data_Bars.ts, Derived_Data_Bars.open, Derived_Data_Bars.high, \
         Derived_Data_Bars.low, Derived_Data_Bars.close, Derived_Data_Bars.volume, \
         (Derived_Data_Bars.symbol = 'DXY'), pg_current_wal_insert_lsn(), pg_current_xact_id() /* keep me */ ;"
    );
    let c = an.statements[0].capture.as_ref().unwrap();
    assert_eq!(
        (c.client_returning, c.extra, c.in_filter),
        (false, 10, true)
    );

    let an = a.analyze("UPDATE derived_data_bars b SET ts = b.ts + interval '1 day' WHERE b.ts < now() RETURNING b.ts");
    assert_eq!(
        an.capture_sql.as_deref().unwrap(),
        "UPDATE derived_data_bars b SET ts = b.ts + interval '1 day' FROM (SELECT ctid AS pgbridge_ctid, \
         symbol AS pgbridge_k0, ts AS pgbridge_k1 FROM derived_data_bars b WHERE b.ts < now() FOR UPDATE) AS pgbridge_old \
         WHERE b.ctid = pgbridge_old.pgbridge_ctid RETURNING b.ts, b.symbol, b.ts, b.open, b.high, b.low, b.close, \
         b.volume, (b.symbol = 'DXY'), pgbridge_old.pgbridge_k0, pgbridge_old.pgbridge_k1, pg_current_wal_insert_lsn(), pg_current_xact_id()"
    );
    let c = an.statements[0].capture.as_ref().unwrap();
    assert_eq!(
        (c.client_returning, c.extra, c.old_key.len()),
        (true, 12, 2)
    );
}

#[test]
fn an_update_from_that_changes_the_key_is_reported() {
    let a = analyzer();
    let an = a.analyze(
        "UPDATE derived_data_bars d SET ts = s.ts FROM shifts s WHERE s.symbol = d.symbol",
    );
    assert!(an.statements[0].capture.is_none());
    assert_eq!(
        an.statements[0].note.as_deref(),
        Some("an UPDATE ... FROM that changes key columns cannot capture the old key")
    );
}

#[test]
fn the_cache_follows_rule_reloads() {
    let live = Arc::new(ArcSwap::from_pointee(sql_support::dxy_checked_rules()));
    let a = Analyzer::new(live.clone(), 100);
    let sql = "SELECT * FROM derived_data_bars";
    let first = a.analyze(sql);
    assert!(
        Arc::ptr_eq(&first, &a.analyze(sql)),
        "second call is a cache hit"
    );
    live.store(Arc::new(RuleSet::default()));
    let after = a.analyze(sql);
    assert!(after.statements.is_empty(), "no rules: unrelated now");
}

#[test]
fn a_capture_inside_a_multi_statement_query() {
    let a = analyzer();
    let sql = "BEGIN; DELETE FROM derived_data_bars WHERE ts < '2026-01-01' RETURNING ts; SELECT 1; COMMIT;";
    let an = a.analyze(sql);
    assert_eq!(
        an.capture_sql.as_deref().unwrap(),
        "BEGIN; DELETE FROM derived_data_bars WHERE ts < '2026-01-01' RETURNING ts, \
         derived_data_bars.symbol, derived_data_bars.ts, (derived_data_bars.symbol = 'DXY'), pg_current_wal_insert_lsn(), pg_current_xact_id(); \
         SELECT 1; COMMIT;"
    );
    let kinds: Vec<Kind> = an.statements.iter().map(|s| s.kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            Kind::Transaction(TxControl::Begin(None)),
            Kind::Write,
            Kind::Other,
            Kind::Transaction(TxControl::Commit)
        ]
    );
    assert_eq!(
        &sql[an.statements[1].text.clone()],
        "DELETE FROM derived_data_bars WHERE ts < '2026-01-01' RETURNING ts"
    );
    let c = an.statements[1].capture.as_ref().unwrap();
    assert_eq!((c.client_returning, c.extra, c.columns.len()), (true, 5, 2));
}

#[test]
fn order_by_is_seen_at_the_top_only() {
    let a = analyzer();
    let ordered = |sql: &str| a.analyze(sql).read_ordered();
    assert!(ordered(
        "SELECT ts FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts"
    ));
    assert!(ordered(
        "SELECT ts FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts LIMIT 3"
    ));
    assert!(!ordered(
        "SELECT ts FROM (SELECT ts FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts) s"
    ));
    assert!(!ordered(
        "SELECT count(*) FROM derived_data_bars WHERE symbol = 'DXY'"
    ));
}
