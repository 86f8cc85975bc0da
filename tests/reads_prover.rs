//! Reads reach the secondary whenever their conditions imply the rule's `where`: with
//! `where = "symbol IN ('DXY', 'EURX')"`, a corpus of reads in scope (equalities, IN lists,
//! ranges, BETWEEN, OR, joins with the shared `instruments`, CTEs, subqueries, UNION; simple,
//! prepared with binary parameters, raw extended with text ones) is each served by the
//! secondary (its served counter goes up by one) with the primary's answer, while reads beyond
//! the `where` are the primary's; in shadow, a mismatch only the prover lets through is seen.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::dxy::*;
use common::wire::{self, Wire};
use common::*;
use tokio_postgres::types::ToSql;

const SERVED: &str = "pgbridge_secondary_reads_total";

/// The DXY rule over two symbols, each translated on the target.
fn rule() -> String {
    DXY_RULE
        .replace(
            "where = \"symbol = 'DXY'\"",
            "where = \"symbol IN ('DXY', 'EURX')\"",
        )
        .replace(
            "\"DXY\" = \"DXY.IDX\"",
            "\"DXY\" = \"DXY.IDX\"\n\"EURX\" = \"EURX.IDX\"",
        )
}

/// A pair with ten bars each of DXY, EURX (migrated) and EURUSD (not), written through pgbridge.
async fn with_three_symbols(hint: &str) -> (Bridge, String) {
    let db = fresh_db(hint);
    let c = cluster();
    let (bridge, db) = mirrored_with(c.primary_port, c.secondary_port, &db, &rule(), "");
    for port in [c.primary_port, c.secondary_port] {
        psql_on(
            port,
            &db,
            "INSERT INTO instruments VALUES ('EURX', 'Euro Index')",
        );
    }
    let client = connect(&bridge.conn_str("postgres", "", &db)).await;
    let mut values = Vec::new();
    for (k, symbol) in ["DXY", "EURX", "EURUSD"].iter().enumerate() {
        for i in 0..10 {
            values.push(format!(
                "('{symbol}', '2026-01-05 10:00+00'::timestamptz + interval '{i} minutes', \
                 {o}, {h}, {l}, {c}, {v})",
                o = 100 + i + k,
                h = 101 + i,
                l = 99 + i,
                c = 100.5 + i as f64,
                v = 1000 + 10 * i + k,
            ));
        }
    }
    client
        .batch_execute(&format!("{INSERT} {}", values.join(", ")))
        .await
        .unwrap();
    wait_applied(&bridge);
    (bridge, db)
}

/// The served counter, once it has passed `before` (waits up to 3 s), or as it is.
fn served_after(bridge: &Bridge, before: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = metric(bridge, SERVED, "result=\"served\"");
        if now > before || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rows(messages: Vec<tokio_postgres::SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

const IN_SCOPE: &[&str] = &[
    "SELECT ts, close FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts",
    "SELECT ts, close FROM derived_data_bars WHERE symbol = 'EURX' ORDER BY ts",
    "SELECT count(*) FROM derived_data_bars WHERE symbol IN ('DXY', 'EURX')",
    "SELECT count(*) FROM derived_data_bars WHERE symbol IN ('EURX')",
    "SELECT * FROM derived_data_bars WHERE 'DXY' = symbol AND ts = '2026-01-05 10:03+00'",
    "SELECT * FROM derived_data_bars b WHERE b.symbol = 'EURX' AND b.volume > 1050 ORDER BY ts",
    "SELECT * FROM public.derived_data_bars WHERE (symbol = 'DXY' OR symbol = 'EURX') \
     AND volume BETWEEN 1020 AND 1060 ORDER BY symbol, ts",
    "SELECT ts FROM derived_data_bars WHERE symbol = 'DXY' AND ts >= '2026-01-05 10:02:00+00' \
     AND ts < '2026-01-05 10:05:00Z' ORDER BY ts",
    "SELECT max(close) FROM derived_data_bars WHERE symbol = 'DXY'::text",
    "SELECT min(open) FROM derived_data_bars WHERE NOT symbol <> 'EURX'",
    "SELECT * FROM derived_data_bars WHERE symbol = 'DXY' AND NOT (volume < 1050) ORDER BY ts",
    "SELECT * FROM derived_data_bars WHERE symbol = 'EURX' AND volume NOT BETWEEN 1010 AND 1080 \
     ORDER BY ts",
    "SELECT * FROM derived_data_bars WHERE symbol IN ('DXY', 'EURX') AND close > 103.5 \
     ORDER BY symbol, ts",
    "SELECT sum(volume) FROM derived_data_bars WHERE symbol = 'DXY' OR (symbol = 'EURX' AND \
     volume > 1001)",
    "SELECT b.ts, i.description FROM derived_data_bars b JOIN instruments i \
     ON i.symbol = b.symbol WHERE b.symbol = 'DXY' ORDER BY b.ts",
    "SELECT b.ts, i.description FROM instruments i JOIN derived_data_bars b \
     ON i.symbol = b.symbol AND b.symbol = 'EURX' ORDER BY b.ts",
    "SELECT i.symbol, count(b.ts) FROM instruments i LEFT JOIN derived_data_bars b \
     ON b.symbol = i.symbol AND b.symbol IN ('DXY', 'EURX') GROUP BY i.symbol ORDER BY 1",
    "SELECT i.description, b.close FROM instruments i, derived_data_bars b \
     WHERE b.symbol = i.symbol AND b.symbol = 'EURX' ORDER BY b.ts",
    "WITH d AS (SELECT * FROM derived_data_bars WHERE symbol = 'DXY') \
     SELECT count(*), max(ts) FROM d",
    "WITH d AS (SELECT ts, close FROM derived_data_bars WHERE symbol IN ('EURX')), \
     e AS (SELECT * FROM d WHERE close > 102) SELECT * FROM e ORDER BY ts",
    "SELECT * FROM (SELECT ts, volume FROM derived_data_bars x WHERE x.symbol = 'DXY') s \
     WHERE s.volume > 1030 ORDER BY ts",
    "SELECT symbol FROM instruments WHERE symbol IN \
     (SELECT symbol FROM derived_data_bars WHERE symbol = 'EURX') ORDER BY 1",
    "SELECT * FROM derived_data_bars WHERE symbol = 'DXY' AND ts = \
     (SELECT max(ts) FROM derived_data_bars d WHERE d.symbol = 'DXY')",
    "SELECT i.symbol FROM instruments i WHERE EXISTS (SELECT 1 FROM derived_data_bars b \
     WHERE b.symbol = 'EURX' AND b.volume > 1000) ORDER BY 1",
    "SELECT ts FROM derived_data_bars WHERE symbol = 'DXY' UNION \
     SELECT ts FROM derived_data_bars WHERE symbol = 'EURX' ORDER BY 1",
    "SELECT symbol, ts FROM derived_data_bars WHERE symbol = 'DXY' AND volume < 1030 UNION ALL \
     SELECT symbol, ts FROM derived_data_bars WHERE symbol IN ('EURX') AND volume > 1070 \
     ORDER BY 1, 2",
    "SELECT ts FROM derived_data_bars WHERE symbol = 'EURX' EXCEPT \
     SELECT ts FROM derived_data_bars WHERE symbol = 'DXY' AND volume > 1040 ORDER BY 1",
    "SELECT count(*) FROM derived_data_bars WHERE symbol = 'DXY' AND ts BETWEEN \
     '2026-01-05 10:00+00' AND '2026-01-05 11:00+01'",
    "SELECT count(*) FROM derived_data_bars WHERE symbol = 'EURX' AND close BETWEEN 101 AND 104.5",
    "SELECT * FROM derived_data_bars WHERE symbol = 'DXY' AND ts > now() - interval '100 years' \
     ORDER BY ts",
];

const OUT_OF_SCOPE: &[&str] = &[
    "SELECT count(*) FROM derived_data_bars",
    "SELECT count(*) FROM derived_data_bars WHERE symbol = 'EURUSD'",
    "SELECT count(*) FROM derived_data_bars WHERE symbol = 'DXY' OR volume > 1000",
    "SELECT count(*) FROM derived_data_bars WHERE symbol <> 'DXY'",
    "SELECT count(*) FROM derived_data_bars WHERE symbol IN ('DXY', 'EURUSD')",
    "SELECT count(*) FROM derived_data_bars WHERE symbol >= 'DXY'",
    "SELECT count(*) FROM derived_data_bars WHERE lower(symbol) = 'dxy'",
    "SELECT count(*) FROM derived_data_bars b LEFT JOIN instruments i \
     ON i.symbol = b.symbol AND b.symbol = 'DXY'",
    "SELECT ts FROM derived_data_bars WHERE symbol = 'DXY' UNION SELECT ts FROM derived_data_bars",
    "SELECT count(*) FROM (SELECT * FROM derived_data_bars) s WHERE s.symbol = 'DXY'",
];

/// Simple-protocol reads: each in scope is served by the secondary with the primary's answer;
/// each out of scope is the primary's (the counter stands still, and EURUSD rows are there).
#[tokio::test]
async fn reads_whose_conditions_imply_the_where_are_served_by_the_secondary() {
    let (bridge, db) = with_three_symbols("prover_simple").await;
    set_reads(&bridge, "secondary");
    let via = connect(&bridge.conn_str("postgres", "", &db)).await;
    let direct = connect(&common::direct("postgres", "", &db)).await;
    let mut served = 0;
    for sql in IN_SCOPE {
        let before = metric(&bridge, SERVED, "result=\"served\"");
        let got = rows(via.simple_query(sql).await.unwrap());
        let after = served_after(&bridge, before);
        assert_eq!(
            after,
            before + 1.0,
            "not served by the secondary: {sql}\n{}",
            bridge.log()
        );
        served += 1;
        let want = rows(direct.simple_query(sql).await.unwrap());
        assert!(!want.is_empty(), "{sql}");
        assert_eq!(got, want, "{sql}");
    }
    for sql in OUT_OF_SCOPE {
        let before = metric(&bridge, SERVED, "result=\"served\"");
        let got = rows(via.simple_query(sql).await.unwrap());
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            metric(&bridge, SERVED, "result=\"served\""),
            before,
            "{sql}"
        );
        assert_eq!(got, rows(direct.simple_query(sql).await.unwrap()), "{sql}");
    }
    let prepared = prepared_reads(&bridge, &db).await;
    let raw = raw_extended_reads(&bridge, &db);
    let total = IN_SCOPE.len() + prepared.1 + raw.1;
    served += prepared.0 + raw.0;
    println!("served {served}/{total} in-scope reads");
    assert_eq!(served, total);
}

/// Prepared reads with binary parameters (tokio-postgres): served, with the primary's rows.
async fn prepared_reads(bridge: &Bridge, db: &str) -> (usize, usize) {
    let via = connect(&bridge.conn_str("postgres", "", db)).await;
    let direct = connect(&common::direct("postgres", "", db)).await;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_607_200 + 180);
    let reads: Vec<(&str, Vec<Box<dyn ToSql + Sync>>)> = vec![
        (
            "SELECT ts::text, close::text FROM derived_data_bars WHERE symbol = $1 ORDER BY ts",
            vec![Box::new("DXY")],
        ),
        (
            "SELECT ts::text FROM derived_data_bars WHERE symbol = $1 AND ts = $2",
            vec![Box::new("EURX"), Box::new(at)],
        ),
        (
            "SELECT count(*)::text FROM derived_data_bars WHERE symbol IN ($1, $2)",
            vec![Box::new("DXY"), Box::new("EURX")],
        ),
        (
            "SELECT ts::text FROM derived_data_bars WHERE symbol = $1 AND volume > $2 ORDER BY ts",
            vec![Box::new("EURX"), Box::new(1040i64)],
        ),
        (
            "SELECT b.ts::text, i.description FROM derived_data_bars b JOIN instruments i \
             ON i.symbol = b.symbol WHERE b.symbol = $1 ORDER BY 1",
            vec![Box::new("DXY")],
        ),
        (
            "WITH d AS (SELECT * FROM derived_data_bars WHERE symbol = $1) \
             SELECT count(*)::text FROM d WHERE ts >= $2",
            vec![Box::new("EURX"), Box::new(at)],
        ),
        (
            "SELECT ts::text FROM derived_data_bars WHERE symbol = $1::text ORDER BY ts",
            vec![Box::new("EURX")],
        ),
    ];
    let mut served = 0;
    for (sql, params) in &reads {
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
        let before = metric(bridge, SERVED, "result=\"served\"");
        let got = via.query(*sql, &params).await.unwrap();
        if served_after(bridge, before) == before + 1.0 {
            served += 1;
        } else {
            eprintln!("not served by the secondary: {sql}");
        }
        let want = direct.query(*sql, &params).await.unwrap();
        let text = |rows: &[tokio_postgres::Row]| -> Vec<Vec<Option<String>>> {
            rows.iter()
                .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
                .collect()
        };
        assert!(!want.is_empty(), "{sql}");
        assert_eq!(text(&got), text(&want), "{sql}");
    }
    // Bound beyond the `where`: the primary's.
    let before = metric(bridge, SERVED, "result=\"served\"");
    let sql = "SELECT count(*)::text FROM derived_data_bars WHERE symbol = $1";
    let n: String = via.query_one(sql, &[&"EURUSD"]).await.unwrap().get(0);
    assert_eq!(n, "10");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(metric(bridge, SERVED, "result=\"served\""), before);
    (served, reads.len())
}

/// Raw extended reads with text and binary parameters: served, byte for byte the primary's.
fn raw_extended_reads(bridge: &Bridge, db: &str) -> (usize, usize) {
    let sql = "SELECT ts, close FROM derived_data_bars WHERE symbol = $1 AND volume >= $2 \
               ORDER BY ts";
    let vol = 1050i64.to_be_bytes();
    let cases: Vec<(u16, Vec<Option<&[u8]>>)> = vec![
        (0, vec![Some(b"DXY"), Some(b"1050")]),
        (0, vec![Some(b"EURX"), Some(b"1001")]),
        (1, vec![Some(b"EURX"), Some(&vol)]),
    ];
    let mut served = 0;
    for (format, params) in &cases {
        let parse = [wire::parse("s", sql, &[]), wire::sync()].concat();
        let mut req = wire::bind("", "s", *format, params, 0);
        req.extend(wire::execute("", 0));
        req.extend(wire::sync());
        let before = metric(bridge, SERVED, "result=\"served\"");
        let via = exchange(bridge.port, db, &parse, &req);
        if served_after(bridge, before) == before + 1.0 {
            served += 1;
        } else {
            eprintln!("not served by the secondary: {params:?}");
        }
        assert_eq!(
            via,
            exchange(cluster().primary_port, db, &parse, &req),
            "{params:?}"
        );
    }
    (served, cases.len())
}

/// Sends `parse` on a fresh session, then `req`; the reply frames to `req`.
fn exchange(port: u16, db: &str, parse: &[u8], req: &[u8]) -> Vec<u8> {
    let mut w = Wire::connect(port);
    w.startup("postgres", db);
    w.send(parse);
    w.frames_until_ready(1);
    w.send(req);
    wire::encode(&w.frames_until_ready(1))
}

/// In shadow, a read only the prover admits (`symbol = 'EURX'` repeats no condition of the
/// `where`) is compared on the secondary: a value planted there is recorded.
#[tokio::test]
async fn in_shadow_a_mismatch_only_the_prover_admits_is_recorded() {
    let (bridge, db) = with_three_symbols("prover_shadow").await;
    psql_on(
        cluster().secondary_port,
        &db,
        "UPDATE data_bars SET volume = 424242 WHERE symbol = 'EURX.IDX' \
         AND ts = '2026-01-05 10:04+00'",
    );
    set_reads(&bridge, "shadow");
    let via = connect(&bridge.conn_str("postgres", "", &db)).await;
    let sql = "SELECT ts, volume FROM derived_data_bars WHERE symbol = 'EURX' \
               AND ts BETWEEN '2026-01-05 10:00+00' AND '2026-01-05 10:09+00' ORDER BY ts";
    let got = rows(via.simple_query(sql).await.unwrap());
    assert_eq!(got.len(), 10);
    assert!(
        got.iter().all(|r| r[1].as_deref() != Some("424242")),
        "the primary answers"
    );
    let records = divergence_records(&bridge, 1);
    let r = records
        .iter()
        .find(|r| r["kind"] == "read_mismatch")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(r["table"], "derived_data_bars", "{r}");
    assert_eq!(
        r["detail"]["changed"][0]["secondary"]["volume"], 424242,
        "{r}"
    );
    assert_eq!(r["detail"]["changed"][0]["primary"]["volume"], 1041, "{r}");
}
