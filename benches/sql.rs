//! The SQL pipeline's costs per statement: the pre-filter on unrelated traffic, a cached
//! classification, and an uncached parse, classify and rewrite.

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
}

criterion_group!(sql, benches);
criterion_main!(sql);
