//! The SQL pipeline's costs per statement: the pre-filter on unrelated traffic, a cached
//! classification, an uncached parse, classify and rewrite, and a write whose literals change
//! every time (simple protocol) served from its shape.

use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use pgbridge::rules::{Column, RuleSet};
use pgbridge::sql::prefilter::Prefilter;
use pgbridge::sql::Analyzer;

fn dxy_rules() -> RuleSet {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dxy.toml");
    std::fs::write(&path, include_str!("../rules/dxy.toml")).expect("write rules");
    let offline = pgbridge::rules::load_offline(&path).expect("valid rules");
    let mut rule = (*offline.rules()[0]).clone();
    let col = |name: &str, ty: &str| Column {
        name: name.into(),
        type_name: ty.into(),
        category: 'X',
        not_null: true,
        has_default: false,
    };
    let cols = ["symbol", "ts", "open", "high", "low", "close", "volume"];
    rule.source_columns = Some(cols.iter().map(|c| col(c, "text")).collect());
    rule.target_columns = rule.source_columns.clone();
    RuleSet::new(vec![rule])
}

fn benches(c: &mut Criterion) {
    let unrelated = "SELECT id, name, email FROM users WHERE id = $1 AND deleted_at IS NULL";
    let typical = "SELECT b.ts, b.close FROM derived_data_bars b WHERE b.symbol = $1 AND b.ts >= $2 ORDER BY b.ts LIMIT 100";
    let filter = Prefilter::new(["derived_data_bars"]);
    c.bench_function("prefilter_unrelated", |b| {
        b.iter(|| filter.is_clear(std::hint::black_box(unrelated)))
    });
    let analyzer = Analyzer::new(Arc::new(ArcSwap::from_pointee(dxy_rules())), 1000);
    c.bench_function("analyze_unrelated", |b| {
        b.iter(|| analyzer.analyze(std::hint::black_box(unrelated)))
    });
    analyzer.analyze(typical);
    c.bench_function("analyze_cached", |b| {
        b.iter(|| analyzer.analyze(std::hint::black_box(typical)))
    });
    c.bench_function("analyze_uncached_read_rewrite", |b| {
        b.iter(|| analyzer.analyze_uncached(std::hint::black_box(typical)))
    });
    let write = "UPDATE derived_data_bars SET close = $1 WHERE symbol = $2 AND ts = $3";
    c.bench_function("analyze_uncached_capture", |b| {
        b.iter(|| analyzer.analyze_uncached(std::hint::black_box(write)))
    });
    // bench/mirror-workload.sql's upsert as pgbench -M simple sends it: new literals each time.
    let upsert = |m: u64| {
        format!(
            "INSERT INTO derived_data_bars (symbol, ts, open, high, low, close, volume) VALUES ('DXY', timestamptz '2026-01-01 00:00:00+00' + {m} * interval '1 minute', 100 + {m} * 0.0001, 100.05 + {m} * 0.0001, 99.95 + {m} * 0.0001, 100.02 + {m} * 0.0001, 1000) ON CONFLICT (symbol, ts) DO UPDATE SET close = derived_data_bars.close + 1, volume = derived_data_bars.volume + 1"
        )
    };
    let texts: Vec<String> = (0..4096).map(upsert).collect();
    c.bench_function("analyze_upsert_uncached", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % texts.len();
            analyzer.analyze_uncached(std::hint::black_box(&texts[i]))
        })
    });
    analyzer.analyze(&upsert(1_000_000));
    c.bench_function("analyze_upsert_new_literals_by_shape", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % texts.len();
            analyzer.analyze(std::hint::black_box(&texts[i]))
        })
    });
}

criterion_group!(sql, benches);
criterion_main!(sql);
