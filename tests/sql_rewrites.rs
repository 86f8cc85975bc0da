//! Every rewrite checked by PostgreSQL itself, on the DXY schemas: reads served by the secondary
//! return the primary's rows; captured writes applied to the secondary keep it equal to the
//! primary; statement-mode rewrites do the same.

mod sql_support;

use pgbridge::sql::{Analyzer, ApplyPlan, Capture, Kind, WriteOp};
use sql_support::{analyzer, connect, dxy_pair, rows, ruleset, DXY_RULES};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

const DXY_ROWS: &str = "SELECT * FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts";

/// Copies the primary's DXY rows to the secondary with the apply plan (the backfill).
async fn backfill(primary: &Client, secondary: &Client, plan: &ApplyPlan) {
    for row in rows(primary, DXY_ROWS).await {
        upsert(secondary, plan, &row).await;
    }
}

async fn upsert(secondary: &Client, plan: &ApplyPlan, values: &[Option<String>]) {
    let params: Vec<Option<&str>> = values.iter().map(|v| v.as_deref()).collect();
    let params: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    secondary.execute(&plan.upsert, &params).await.unwrap();
}

async fn delete(secondary: &Client, plan: &ApplyPlan, key: &[Option<String>]) {
    let params: Vec<Option<&str>> = key.iter().map(|v| v.as_deref()).collect();
    let params: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    secondary.execute(&plan.delete, &params).await.unwrap();
}

/// What the applier will do with one captured row.
async fn apply(
    secondary: &Client,
    plan: &ApplyPlan,
    c: &Capture,
    key_pos: &[usize],
    row: &[Option<String>],
) {
    // The WAL position and the transaction id come last; the journal, not the target, needs
    // them.
    let extra = &row[row.len() - c.extra..row.len() - 2];
    let image = &extra[..c.columns.len()];
    let in_filter = !c.in_filter || extra[c.columns.len()].as_deref() == Some("t");
    let key: Vec<Option<String>> = key_pos.iter().map(|&i| image[i].clone()).collect();
    let old_key = &extra[extra.len() - c.old_key.len()..];
    match c.op {
        WriteOp::Delete if in_filter => delete(secondary, plan, image).await,
        WriteOp::Delete => {}
        _ => {
            if !c.old_key.is_empty() && old_key != key.as_slice() {
                delete(secondary, plan, old_key).await;
            }
            if in_filter {
                upsert(secondary, plan, image).await;
            } else if c.op == WriteOp::Update {
                delete(secondary, plan, &key).await;
            }
        }
    }
}

async fn read_both(
    a: &Analyzer,
    primary: &Client,
    secondary: &Client,
    sql: &str,
) -> (Vec<Vec<Option<String>>>, Vec<Vec<Option<String>>>) {
    let analysis = a.analyze(sql);
    let rewritten = analysis
        .read_rewrite()
        .unwrap_or_else(|| panic!("{sql}: no read rewrite: {analysis:?}"));
    (rows(primary, sql).await, rows(secondary, rewritten).await)
}

#[tokio::test]
async fn reads_on_the_secondary_return_the_primarys_rows() {
    let (p, s) = dxy_pair().await;
    let (primary, secondary) = (connect(&p).await, connect(&s).await);
    primary
        .batch_execute("DELETE FROM derived_data_bars WHERE symbol <> 'DXY'")
        .await
        .unwrap();
    let rules = ruleset(&p, &s, DXY_RULES).await;
    let plan = ApplyPlan::for_rule(&rules.rules()[0]).unwrap();
    backfill(&primary, &secondary, &plan).await;
    // Rows of the target that are not this rule's must never show.
    secondary
        .batch_execute(
            "INSERT INTO data_bars SELECT symbol, '5m', ts, open, high, low, close_px, volume, true FROM data_bars;
             INSERT INTO data_bars SELECT 'EURUSD.X', '1m', ts, 1, 1, 1, 1, 1, true FROM data_bars WHERE timeframe = '1m';
             INSERT INTO data_bars VALUES ('DXY.IDX', '1m', '2027-01-01', 1, 1, 1, 1, 1, false);",
        )
        .await
        .unwrap();
    let a = analyzer(rules);
    let corpus = [
        "SELECT * FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts",
        "SELECT symbol, close FROM derived_data_bars WHERE symbol = 'DXY' AND ts >= '2026-01-05 14:40:00+00' ORDER BY ts LIMIT 5",
        "select b.close, b.ts from derived_data_bars b where b.volume > 1030 and B.Symbol = 'DXY' order by b.ts -- a comment",
        "SELECT count(*), max(close), min(derived_data_bars.open), sum(volume) FROM derived_data_bars WHERE derived_data_bars.symbol = 'DXY'",
        "SELECT i.description, d.close FROM public.derived_data_bars d JOIN instruments i ON i.symbol = d.symbol WHERE d.symbol = 'DXY' ORDER BY d.ts LIMIT 3",
        "WITH last AS (SELECT max(ts) AS ts FROM derived_data_bars WHERE symbol = 'DXY') SELECT d.* FROM derived_data_bars d, last WHERE d.ts = last.ts AND d.symbol = 'DXY'",
        "SELECT * FROM instruments WHERE symbol IN (SELECT symbol FROM \"derived_data_bars\" WHERE close > 100.5 AND symbol = 'DXY')",
        "SELECT symbol, sum(volume) AS v FROM DERIVED_DATA_BARS WHERE SYMBOL = 'DXY' GROUP BY symbol",
        "SELECT public.derived_data_bars.close FROM public.derived_data_bars WHERE public.derived_data_bars.symbol = 'DXY' ORDER BY 1 LIMIT 2",
        "SELECT x.ts FROM (SELECT ts, close FROM derived_data_bars WHERE close > 100.3 AND symbol = 'DXY') AS x ORDER BY x.ts DESC LIMIT 4",
        "SELECT a.ts, b.close FROM derived_data_bars a JOIN derived_data_bars b ON b.ts = a.ts + interval '1 minute' WHERE a.symbol = 'DXY' AND b.symbol = 'DXY' ORDER BY a.ts LIMIT 3",
    ];
    for sql in corpus {
        let (from_primary, from_secondary) = read_both(&a, &primary, &secondary, sql).await;
        assert!(!from_primary.is_empty(), "{sql}");
        assert_eq!(from_primary, from_secondary, "{sql}");
    }
    // A parameterized read is valid on the secondary too.
    let analysis =
        a.analyze("SELECT close FROM derived_data_bars WHERE symbol = 'DXY' AND ts = $1");
    let rewritten = analysis.read_rewrite().unwrap();
    secondary.prepare(rewritten).await.unwrap();
}

#[tokio::test]
async fn captured_writes_keep_the_secondary_equal_to_the_primary() {
    let (p, s) = dxy_pair().await;
    let (primary, secondary) = (connect(&p).await, connect(&s).await);
    let rules = ruleset(&p, &s, DXY_RULES).await;
    let rule = rules.rules()[0].clone();
    let plan = ApplyPlan::for_rule(&rule).unwrap();
    backfill(&primary, &secondary, &plan).await;
    let key_pos: Vec<usize> = rule
        .key
        .iter()
        .map(|k| {
            rule.source_columns
                .as_ref()
                .unwrap()
                .iter()
                .position(|c| &c.name == k)
                .unwrap()
        })
        .collect();
    let a = analyzer(rules);
    let corpus: &[(&str, usize)] = &[
        ("INSERT INTO derived_data_bars (symbol, ts, open, high, low, close) VALUES ('DXY', '2026-01-05 16:00:00+00', 1, 2, 0.5, 1.5) -- new bar", 0),
        ("INSERT INTO derived_data_bars VALUES ('EURUSD', '2026-01-05 16:00:00+00', 1, 2, 0.5, 1.5, 7)", 0),
        ("UPDATE derived_data_bars SET close = close + 1 WHERE symbol = 'DXY' AND ts < '2026-01-05 14:35:00+00' RETURNING ts", 1),
        ("UPDATE derived_data_bars AS b SET ts = b.ts + interval '1 day' WHERE b.symbol = 'DXY' AND b.ts = '2026-01-05 14:50:00+00'", 0),
        ("update derived_data_bars set symbol = 'XXX' where symbol = 'DXY' and ts = '2026-01-05 14:51:00+00' returning symbol, ts", 2),
        ("INSERT INTO derived_data_bars (symbol, ts, open, high, low, close, volume) VALUES ('DXY', '2026-01-05 14:30:00+00', 9, 9, 9, 9, 9) ON CONFLICT (symbol, ts) DO UPDATE SET volume = EXCLUDED.volume", 0),
        ("INSERT INTO derived_data_bars SELECT 'DXY', ts + interval '2 days', open, high, low, close, volume FROM derived_data_bars WHERE symbol = 'EURUSD' AND ts < '2026-01-05 14:33:00+00' RETURNING *", 7),
        ("DELETE FROM derived_data_bars WHERE symbol = 'DXY' AND volume > 1055 /* trim */", 0),
        ("DELETE FROM public.derived_data_bars WHERE symbol = 'EURUSD' AND volume = 1001", 0),
        ("UPDATE derived_data_bars SET volume = volume * 2, ts = ts - interval '1 hour' WHERE volume BETWEEN 1040 AND 1042", 0),
    ];
    for &(sql, client_columns) in corpus {
        let analysis = a.analyze(sql);
        let info = &analysis.statements[0];
        assert_eq!(info.kind, Kind::Write, "{sql}");
        let capture = info
            .capture
            .as_ref()
            .unwrap_or_else(|| panic!("{sql}: {:?}", info.note));
        let spliced = analysis.capture_sql.as_deref().unwrap();
        if capture.old_key.is_empty() {
            let (code, comment) = sql.split_once(" /*").map_or((sql, ""), |(a, b)| (a, b));
            let code = code.split(" --").next().unwrap();
            assert!(spliced.starts_with(code), "{spliced}");
            assert!(spliced.ends_with(comment), "{spliced}");
        }
        for row in rows(&primary, spliced).await {
            assert_eq!(row.len(), client_columns + capture.extra, "{sql}");
            apply(&secondary, &plan, capture, &key_pos, &row).await;
        }
        let read = a.analyze(DXY_ROWS);
        assert_eq!(
            rows(&primary, DXY_ROWS).await,
            rows(&secondary, read.read_rewrite().unwrap()).await,
            "after {sql}"
        );
    }
    let truncate = a.analyze("TRUNCATE derived_data_bars");
    assert_eq!(truncate.statements[0].kind, Kind::Write);
    assert_eq!(truncate.statements[0].writes[0].op, WriteOp::Truncate);
    primary
        .batch_execute("TRUNCATE derived_data_bars")
        .await
        .unwrap();
    secondary.batch_execute(&plan.truncate).await.unwrap();
    let left = rows(&secondary, "SELECT count(*) FROM data_bars").await;
    assert_eq!(left, vec![vec![Some("0".to_string())]]);
}

#[tokio::test]
async fn statement_mode_rewrites_do_the_same_on_the_target() {
    let (p, s) = dxy_pair().await;
    let (primary, secondary) = (connect(&p).await, connect(&s).await);
    let text = DXY_RULES.replace("mirror = \"rows\"", "mirror = \"statements\"");
    let rules = ruleset(&p, &s, &text).await;
    let plan = ApplyPlan::for_rule(&rules.rules()[0]).unwrap();
    backfill(&primary, &secondary, &plan).await;
    let a = analyzer(rules);
    let corpus = [
        "INSERT INTO derived_data_bars (symbol, ts, open, high, low, close, volume) VALUES ('DXY', '2026-01-05 16:00:00+00', 1, 2, 0.5, 1.5, 3), ('EURUSD', '2026-01-05 16:00:00+00', 1, 2, 0.5, 1.5, 3)",
        "INSERT INTO derived_data_bars SELECT symbol, ts + interval '1 day', open, high, low, close, volume FROM derived_data_bars WHERE ts < '2026-01-05 14:33:00+00'",
        "UPDATE derived_data_bars SET close = close + 1, volume = 5 WHERE symbol = 'DXY' AND ts < '2026-01-05 14:35:00+00'",
        "UPDATE derived_data_bars b SET ts = b.ts + interval '1 day' WHERE b.ts = '2026-01-05 14:50:00+00'",
        "DELETE FROM derived_data_bars WHERE volume > 1055",
        "DELETE FROM derived_data_bars d WHERE d.symbol = 'DXY' AND d.ts = '2026-01-05 14:31:00+00'",
    ];
    for sql in corpus {
        let analysis = a.analyze(sql);
        let rewrite = analysis.statements[0]
            .statement_rewrite
            .as_ref()
            .unwrap_or_else(|| panic!("{sql}: {:?}", analysis.statements[0].note));
        primary.batch_execute(sql).await.unwrap();
        secondary
            .batch_execute(&rewrite.sql)
            .await
            .unwrap_or_else(|e| panic!("{}\n{e:?}", rewrite.sql));
        let read = a.analyze(DXY_ROWS);
        assert_eq!(
            rows(&primary, DXY_ROWS).await,
            rows(&secondary, read.read_rewrite().unwrap()).await,
            "after {sql}\n{}",
            rewrite.sql
        );
    }
    let truncate = a.analyze("TRUNCATE derived_data_bars");
    let rewrite = truncate.statements[0].statement_rewrite.as_ref().unwrap();
    primary
        .batch_execute("TRUNCATE derived_data_bars")
        .await
        .unwrap();
    secondary.batch_execute(&rewrite.sql).await.unwrap();
    assert!(rows(&secondary, "SELECT * FROM data_bars").await.is_empty());
    let analysis = a.analyze("INSERT INTO derived_data_bars (symbol, ts, open, high, low, close) VALUES ('DXY', now(), 1, 1, 1, random())");
    let warnings = &analysis.statements[0]
        .statement_rewrite
        .as_ref()
        .unwrap()
        .warnings;
    assert_eq!(
        warnings,
        &[
            "now() is evaluated again on the secondary and may differ",
            "random() is evaluated again on the secondary and may differ",
            "column volume takes its default on each side and may differ",
        ]
    );
}

const ORDERS_PRIMARY: &str = "
CREATE SCHEMA legacy;
CREATE TABLE legacy.orders (
    id       serial PRIMARY KEY,
    customer varchar(40) NOT NULL,
    amount   numeric(10, 2),
    status   text NOT NULL DEFAULT 'N',
    created  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO legacy.orders (customer, amount, status)
SELECT 'c' || g, g * 1.25, CASE WHEN g % 3 = 0 THEN 'P' ELSE 'N' END FROM generate_series(1, 20) g;
";

const ORDERS_SECONDARY: &str = "
CREATE TABLE orders_v2 (
    order_id bigint NOT NULL,
    origin   text NOT NULL,
    customer text NOT NULL,
    amount   numeric(12, 2),
    state    text NOT NULL,
    created  timestamptz NOT NULL,
    PRIMARY KEY (order_id, origin)
);
";

const ORDERS_RULES: &str = r#"
[[table]]
source = "legacy.orders"
target = "orders_v2"
key = ["id"]
reads = "secondary"

[table.columns]
id = "order_id"
status = "state"

[table.values]
origin = "'legacy'"

[table.translate.status]
"N" = "new"
"P" = "paid"
"#;

/// A second schema: a schema-qualified source, a serial key renamed, types that differ between
/// the sides (cast back on reads), defaults the primary computes (captured, never replayed).
#[tokio::test]
async fn a_reshaped_orders_table_round_trips() {
    let p = sql_support::fresh_db("p", ORDERS_PRIMARY).await;
    let s = sql_support::fresh_db("s", ORDERS_SECONDARY).await;
    let (primary, secondary) = (connect(&p).await, connect(&s).await);
    let rules = ruleset(&p, &s, ORDERS_RULES).await;
    let rule = rules.rules()[0].clone();
    let plan = ApplyPlan::for_rule(&rule).unwrap();
    for row in rows(&primary, "SELECT * FROM legacy.orders").await {
        upsert(&secondary, &plan, &row).await;
    }
    let a = analyzer(rules);
    let all = "SELECT * FROM legacy.orders ORDER BY id";
    let same = |sql: &'static str| {
        let analysis = a.analyze(sql);
        let rewritten = analysis.read_rewrite().map(str::to_string);
        let why = format!("{:?}", analysis.statements);
        let (primary, secondary) = (&primary, &secondary);
        async move {
            let rewritten = rewritten.unwrap_or_else(|| panic!("{sql}: no read rewrite {why}"));
            assert_eq!(
                rows(primary, sql).await,
                rows(secondary, &rewritten).await,
                "{sql}\n{rewritten}"
            );
        }
    };
    same(all).await;
    same("SELECT o.status, count(*), sum(o.amount) FROM legacy.orders o GROUP BY o.status ORDER BY 1").await;
    same("SELECT pg_typeof(id)::text, pg_typeof(customer)::text FROM legacy.orders LIMIT 1").await;
    same("SELECT * FROM legacy.orders WHERE status = 'P' AND customer LIKE 'c1%' ORDER BY id")
        .await;
    let key_pos = [0];
    for sql in [
        "INSERT INTO legacy.orders (customer, amount) VALUES ('new one', 9.99), ('another', NULL)",
        "UPDATE legacy.orders SET status = 'P', amount = amount * 2 WHERE id % 4 = 0",
        "UPDATE legacy.orders SET id = id + 1000 WHERE id = 5",
        "DELETE FROM legacy.orders WHERE status = 'N' AND id < 10",
    ] {
        let analysis = a.analyze(sql);
        let capture = analysis.statements[0]
            .capture
            .clone()
            .unwrap_or_else(|| panic!("{sql}"));
        for row in rows(&primary, analysis.capture_sql.as_deref().unwrap()).await {
            apply(&secondary, &plan, &capture, &key_pos, &row).await;
        }
        same(all).await;
    }
}
