//! Shadow reads against a real primary and secondary with the DXY schemas, using the
//! Analyzer's read rewrite: identical data records nothing, a changed row is recorded with its
//! key and column, a slow or unreachable secondary is recorded and never blocks the caller.

mod sql_support;

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use pgbridge::config::ShadowConfig;
use pgbridge::divergence::compare::{Field, ResultSet};
use pgbridge::divergence::Recorder;
use pgbridge::mirror::Value;
use pgbridge::reads::shadow::{Outcome, Shadow, ShadowJob, ShadowOptions};
use pgbridge::rules::RuleSet;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The DXY rows of the primary, as the secondary holds them after the backfill.
const BACKFILL: &str = "INSERT INTO data_bars \
    (symbol, timeframe, ts, open, high, low, close_px, volume, is_synthetic) \
    SELECT 'DXY.IDX', '1m', timestamptz '2026-01-05 14:30:00+00' + make_interval(mins => g), \
           100 + g * 0.01, 100.05 + g * 0.01, 99.95 + g * 0.01, 100.02 + g * 0.01, 1000 + g, true \
    FROM generate_series(0, 59) AS g";

struct Raw(Option<Bytes>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(Some(Bytes::copy_from_slice(raw))))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

struct Fixture {
    primary: Client,
    primary_db: String,
    secondary: Client,
    secondary_db: String,
    analyzer: pgbridge::sql::Analyzer,
    rules: Arc<ArcSwap<RuleSet>>,
    recorder: Arc<Recorder>,
    dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let (p, s) = sql_support::dxy_pair().await;
    let rules = sql_support::ruleset(&p, &s, sql_support::DXY_RULES).await;
    let rules = Arc::new(ArcSwap::from_pointee(rules));
    let secondary = sql_support::connect(&s).await;
    secondary.batch_execute(BACKFILL).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        primary: sql_support::connect(&p).await,
        primary_db: p,
        secondary,
        secondary_db: s,
        analyzer: pgbridge::sql::Analyzer::new(rules.clone(), 100),
        rules,
        recorder: Arc::new(Recorder::open_path(&dir.path().join("d.jsonl"), false).unwrap()),
        dir,
    }
}

impl Fixture {
    fn shadow(&self, config: ShadowConfig, url: &str) -> Shadow {
        let pg: pgbridge::config::PgUrl = url.parse().unwrap();
        Shadow::new(
            ShadowOptions::new(&config, &pg),
            self.recorder.clone(),
            self.rules.clone(),
            None,
        )
    }

    fn default_shadow(&self) -> Shadow {
        self.shadow(
            ShadowConfig::default(),
            &sql_support::url(&self.secondary_db),
        )
    }

    /// The primary's answer in binary format (extended protocol), as a client asking binary.
    async fn primary_binary(&self, sql: &str, params: &[Value]) -> ResultSet {
        let types: Vec<Type> = params
            .iter()
            .map(|v| Type::from_oid(v.type_oid).unwrap())
            .collect();
        let st = self.primary.prepare_typed(sql, &types).await.unwrap();
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = self.primary.query(&st, &refs).await.unwrap();
        ResultSet {
            fields: st
                .columns()
                .iter()
                .map(|c| Field::new(c.name(), c.type_().oid(), 1))
                .collect(),
            rows: rows
                .iter()
                .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i).0).collect())
                .collect(),
        }
    }

    /// The primary's answer in text format (simple query), with the type OIDs it describes.
    async fn primary_text(&self, sql: &str) -> ResultSet {
        let st = self.primary.prepare(sql).await.unwrap();
        let msgs = self.primary.simple_query(sql).await.unwrap();
        ResultSet {
            fields: st
                .columns()
                .iter()
                .map(|c| Field::new(c.name(), c.type_().oid(), 0))
                .collect(),
            rows: msgs
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(
                        (0..r.len())
                            .map(|i| r.get(i).map(|s| Bytes::copy_from_slice(s.as_bytes())))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect(),
        }
    }

    fn job(&self, sql: &str, params: Vec<Value>, primary: ResultSet) -> ShadowJob {
        let analysis = self.analyzer.analyze(sql);
        let rewrite = analysis
            .read_rewrite()
            .unwrap_or_else(|| panic!("no read rewrite for {sql}: {analysis:?}"));
        ShadowJob {
            ordered: analysis.read_ordered(),
            sql: rewrite.to_string(),
            bound: match params.is_empty() {
                true => analysis.read_bound().cloned(),
                false => None,
            },
            params,
            settings: vec![
                ("DateStyle".into(), "ISO, MDY".into()),
                ("TimeZone".into(), "UTC".into()),
                ("extra_float_digits".into(), "1".into()),
            ],
            table: "derived_data_bars".into(),
            query: pgbridge::divergence::normalize_query(sql),
            primary,
            session: Some(7),
            after: None,
        }
    }

    fn records(&self) -> Vec<serde_json::Value> {
        self.recorder.flush();
        std::fs::read_to_string(self.dir.path().join("d.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

async fn run(shadow: &Shadow, job: ShadowJob) -> Outcome {
    let ticket = shadow.ticket(&job.table).expect("admitted");
    ticket.submit(job).await.unwrap()
}

const READS: &[&str] = &[
    "SELECT * FROM derived_data_bars WHERE symbol = 'DXY'",
    "SELECT ts, close FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts DESC LIMIT 5",
    "SELECT count(*), sum(volume), max(close), avg(close) FROM derived_data_bars \
     WHERE symbol = 'DXY'",
    "SELECT b.ts, b.close, i.description FROM derived_data_bars b \
     JOIN instruments i ON i.symbol = b.symbol WHERE b.symbol = 'DXY' AND b.close > 100.3",
    "WITH last AS (SELECT max(ts) AS ts FROM derived_data_bars WHERE symbol = 'DXY') \
     SELECT b.* FROM derived_data_bars b, last WHERE b.ts = last.ts AND b.symbol = 'DXY'",
    "SELECT close::float8 AS c, ts::date AS d, symbol = 'DXY' AS is_dxy \
     FROM derived_data_bars WHERE symbol = 'DXY'",
];

#[tokio::test]
async fn identical_data_records_nothing() {
    let f = fixture().await;
    let shadow = f.default_shadow();
    for sql in READS {
        let text = f.primary_text(sql).await;
        assert_eq!(
            run(&shadow, f.job(sql, vec![], text)).await,
            Outcome::Equal,
            "{sql}"
        );
        let binary = f.primary_binary(sql, &[]).await;
        assert_eq!(
            run(&shadow, f.job(sql, vec![], binary)).await,
            Outcome::Equal,
            "{sql}"
        );
    }
    // Parameters, text and binary, with their type OIDs.
    let sql = "SELECT * FROM derived_data_bars WHERE symbol = $1 AND volume >= $2 ORDER BY ts";
    let params = vec![
        Value::text(25, "DXY"),
        Value::binary(20, 1030i64.to_be_bytes().to_vec()),
    ];
    let primary = f.primary_binary(sql, &params).await;
    assert_eq!(primary.rows.len(), 30);
    assert_eq!(
        run(&shadow, f.job(sql, params, primary)).await,
        Outcome::Equal
    );
    assert!(f.records().is_empty());
    assert_eq!(shadow.in_flight(), 0);
}

#[tokio::test]
async fn a_simple_read_whose_shape_binds_runs_prepared_and_one_that_cannot_runs_as_text() {
    let f = fixture().await;
    let shadow = f.default_shadow();
    // What the shadow connection ran last.
    let ran = || async {
        f.secondary
            .query_one(
                "SELECT query FROM pg_stat_activity WHERE application_name = 'pgbridge shadow' \
                 ORDER BY state_change DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    for close in ["100.3", "100.35"] {
        let sql = format!(
            "SELECT ts, close FROM derived_data_bars WHERE symbol = 'DXY' AND close > {close} \
             ORDER BY ts"
        );
        let primary = f.primary_text(&sql).await;
        assert!(!primary.rows.is_empty());
        let job = f.job(&sql, vec![], primary);
        assert_eq!(job.bound.as_ref().unwrap().values, [close]);
        assert_eq!(run(&shadow, job).await, Outcome::Equal, "{sql}");
        let last = ran().await;
        assert!(last.contains("close > $1"), "the secondary ran {last}");
    }
    // concat's arguments are "any": the secondary cannot type a parameter there, so the read
    // runs with its literals, and compares the same.
    for minute in ["14:35", "14:36"] {
        let sql = format!(
            "SELECT concat(symbol, '/', volume) FROM derived_data_bars WHERE symbol = 'DXY' \
             AND ts = '2026-01-05 {minute}:00+00'"
        );
        let primary = f.primary_text(&sql).await;
        assert_eq!(primary.rows.len(), 1);
        let job = f.job(&sql, vec![], primary);
        assert!(job.bound.is_some());
        assert_eq!(run(&shadow, job).await, Outcome::Equal, "{sql}");
        let last = ran().await;
        assert!(
            last.contains(minute) && !last.contains("$1"),
            "the secondary ran {last}"
        );
    }
    assert!(f.records().is_empty());
}

#[tokio::test]
async fn a_row_changed_on_the_secondary_is_recorded_with_its_key_and_column() {
    let f = fixture().await;
    let shadow = f.default_shadow();
    f.secondary
        .batch_execute("UPDATE data_bars SET close_px = 1 WHERE ts = '2026-01-05 14:35:00+00'")
        .await
        .unwrap();
    let sql = READS[0];
    let primary = f.primary_text(sql).await;
    let Outcome::Mismatch(d) = run(&shadow, f.job(sql, vec![], primary)).await else {
        panic!("expected a mismatch");
    };
    assert_eq!(d.detail["changed_rows"], 1);
    let records = f.records();
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["kind"], "read_mismatch");
    assert_eq!(r["table"], "derived_data_bars");
    assert_eq!(r["session"], 7);
    assert_eq!(
        r["query"],
        "SELECT * FROM derived_data_bars WHERE symbol = $1"
    );
    assert_eq!(r["primary"], "60 rows");
    assert_eq!(r["secondary"], "60 rows");
    let changed = &r["detail"]["changed"][0];
    assert_eq!(changed["key"]["symbol"], "DXY");
    assert_eq!(changed["key"]["ts"], "2026-01-05 14:35:00+00");
    assert_eq!(changed["columns"], serde_json::json!(["close"]));
    assert_eq!(changed["primary"]["close"], "100.07");
    assert_eq!(changed["secondary"]["close"], "1");

    // A row gone from the secondary: a row count difference naming the missing key.
    f.secondary
        .batch_execute("DELETE FROM data_bars WHERE ts = '2026-01-05 14:36:00+00'")
        .await
        .unwrap();
    let primary = f.primary_binary(sql, &[]).await;
    let Outcome::Mismatch(d) = run(&shadow, f.job(sql, vec![], primary)).await else {
        panic!("expected a mismatch");
    };
    assert_eq!((d.primary_rows, d.secondary_rows), (60, 59));
    assert_eq!(
        d.detail["missing"][0]["key"]["ts"],
        "2026-01-05 14:36:00+00"
    );
}

#[tokio::test]
async fn a_slow_secondary_times_out_without_blocking_the_caller() {
    let f = fixture().await;
    let shadow = f.shadow(
        ShadowConfig {
            timeout_ms: 300,
            ..ShadowConfig::default()
        },
        &sql_support::url(&f.secondary_db),
    );
    let sql = READS[0];
    let primary = f.primary_text(sql).await;
    let mut job = f.job(sql, vec![], primary);
    job.sql = format!(
        "SELECT * FROM ({}) s WHERE pg_sleep(0.05) IS NOT NULL",
        job.sql
    );
    let started = Instant::now();
    let handle = shadow.ticket(&job.table).unwrap().submit(job);
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(handle.await.unwrap(), Outcome::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
    let records = f.records();
    assert_eq!(records[0]["kind"], "secondary_error");
    assert_eq!(records[0]["secondary"], "timeout");

    // The connection was not reused in a bad state: the next read is fine.
    let primary = f.primary_text(READS[2]).await;
    assert_eq!(
        run(&shadow, f.job(READS[2], vec![], primary)).await,
        Outcome::Equal
    );
}

#[tokio::test]
async fn an_unreachable_secondary_is_recorded_and_a_full_queue_drops() {
    let f = fixture().await;
    let port = pgbridge::pgcluster::free_port().unwrap();
    let shadow = f.shadow(
        ShadowConfig {
            max_concurrency: 1,
            queue: 0,
            ..ShadowConfig::default()
        },
        &format!("postgres://postgres@127.0.0.1:{port}/x"),
    );
    let sql = READS[0];
    let primary = f.primary_text(sql).await;
    let job = f.job(sql, vec![], primary);
    let started = Instant::now();
    let first = shadow.ticket("derived_data_bars").unwrap();
    // One place only: a second read is dropped at once, not queued.
    assert!(shadow.ticket("derived_data_bars").is_none());
    let handle = first.submit(job.clone());
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(handle.await.unwrap(), Outcome::Error("connection".into()));
    let records = f.records();
    assert_eq!(records[0]["kind"], "secondary_error");
    assert_eq!(records[0]["secondary"], "connection");
    // The place is free again.
    assert!(shadow.ticket("derived_data_bars").is_some());
    // A statement error carries its SQLSTATE.
    let good = f.default_shadow();
    let mut bad = job;
    bad.sql = "SELECT * FROM no_such_table".into();
    assert_eq!(run(&good, bad).await, Outcome::Error("42P01".into()));
}

#[tokio::test]
async fn a_lagging_mirror_is_waited_for_then_skipped() {
    let f = fixture().await;
    let (tx, rx) = tokio::sync::watch::channel(3u64);
    let pg: pgbridge::config::PgUrl = sql_support::url(&f.secondary_db).parse().unwrap();
    let shadow = Shadow::new(
        ShadowOptions::new(
            &ShadowConfig {
                timeout_ms: 300,
                ..ShadowConfig::default()
            },
            &pg,
        ),
        f.recorder.clone(),
        f.rules.clone(),
        Some(rx),
    );
    let sql = READS[0];
    let primary = f.primary_text(sql).await;
    let mut job = f.job(sql, vec![], primary);
    job.after = Some(5);
    assert_eq!(run(&shadow, job.clone()).await, Outcome::Lagging);
    // Applied in time: compared.
    let handle = shadow.ticket("derived_data_bars").unwrap().submit(job);
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.send(5).unwrap();
    assert_eq!(handle.await.unwrap(), Outcome::Equal);
    assert!(f.records().is_empty());
}

#[tokio::test]
async fn a_tables_compare_section_loosens_its_floats_and_ignores_its_columns() {
    let f = fixture().await;
    let shadow = f.default_shadow();
    // Behind pgbridge's back: a price off by a millionth, and a volume the target keeps itself.
    f.secondary
        .batch_execute(
            "UPDATE data_bars SET close_px = close_px + 0.000001 WHERE ts = '2026-01-05 14:35:00+00'; \
             UPDATE data_bars SET volume = volume + 1 WHERE ts = '2026-01-05 14:36:00+00'",
        )
        .await
        .unwrap();
    let floats =
        "SELECT symbol, ts, close::float8 AS close FROM derived_data_bars WHERE symbol = 'DXY'";
    let volumes = "SELECT symbol, ts, volume FROM derived_data_bars WHERE symbol = 'DXY'";
    let outcome = |sql: &'static str| {
        let (f, shadow) = (&f, &shadow);
        async move {
            let primary = f.primary_text(sql).await;
            run(shadow, f.job(sql, vec![], primary)).await
        }
    };

    // Without a [table.compare], [shadow]'s defaults: both differences are recorded.
    let Outcome::Mismatch(d) = outcome(floats).await else {
        panic!("the float difference is beyond [shadow]'s tolerance");
    };
    assert_eq!(d.detail["changed_rows"], 1, "{}", d.detail);
    let Outcome::Mismatch(d) = outcome(volumes).await else {
        panic!("the volume differs");
    };
    assert_eq!(d.detail["columns"], serde_json::json!(["volume"]));
    let records = f.records();
    assert_eq!(records.len(), 2, "{records:#?}");
    assert!(records.iter().all(|r| r["kind"] == "read_mismatch"));

    // The same reads under the table's own tolerance and ignored column record nothing.
    let section = "\n[table.compare]\nfloat_tolerance_abs = 1e-5\nignore_columns = [\"volume\"]\n";
    let rules = sql_support::ruleset(
        &f.primary_db,
        &f.secondary_db,
        &format!("{}{section}", sql_support::DXY_RULES),
    )
    .await;
    f.rules.store(Arc::new(rules));
    assert_eq!(outcome(floats).await, Outcome::Equal);
    assert_eq!(outcome(volumes).await, Outcome::Equal);
    assert_eq!(f.records().len(), 2, "nothing more recorded");

    // A difference beyond the table's tolerance is still one.
    f.secondary
        .batch_execute(
            "UPDATE data_bars SET close_px = close_px + 0.01 WHERE ts = '2026-01-05 14:40:00+00'",
        )
        .await
        .unwrap();
    let Outcome::Mismatch(d) = outcome(floats).await else {
        panic!("a hundredth is beyond the table's tolerance");
    };
    assert_eq!(d.detail["changed_rows"], 1, "{}", d.detail);
    let records = f.records();
    assert_eq!(records.len(), 3);
    assert_eq!(records[2]["kind"], "read_mismatch");
    assert_eq!(records[2]["table"], "derived_data_bars");
}
