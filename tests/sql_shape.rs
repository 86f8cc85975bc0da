//! The shape cache is exact: for texts that differ only in their literals, the analysis filled
//! from a cached shape equals the uncached parse of each text, in `rows` and `statements` mode;
//! and a read the shape binds to parameters, with its values put back, is its read rewrite.

mod sql_support;

use std::sync::Arc;

use arc_swap::ArcSwap;
use pgbridge::rules::{MirrorMode, RuleSet};
use pgbridge::sql::{Analysis, Analyzer};
use proptest::prelude::*;

/// The DXY rule with the columns the online check would find, mirrored in `mode`.
fn dxy_rules(mode: MirrorMode) -> RuleSet {
    let mut rule = (*sql_support::dxy_checked_rules().rules()[0]).clone();
    rule.mirror = mode;
    RuleSet::new(vec![rule])
}

fn analyzer(mode: MirrorMode) -> Analyzer {
    Analyzer::new(Arc::new(ArcSwap::from_pointee(dxy_rules(mode))), 1000)
}

/// `a` without its bound reads, each checked first: its text with each parameter replaced by its
/// value (a string's quoted, a number's as it is) is the statement's read rewrite.
fn unbound(a: &Analysis) -> Analysis {
    let mut a = a.clone();
    for s in &mut a.statements {
        let Some(bound) = s.read_bound.take() else {
            continue;
        };
        assert_eq!(bound.types.len(), bound.values.len());
        let mut sql = bound.sql.to_string();
        // From the last, so that `$1` does not take the start of `$12`.
        for (k, (ty, value)) in bound.types.iter().zip(&bound.values).enumerate().rev() {
            let literal = match ty {
                0 => format!("'{}'", value.replace('\'', "''")),
                _ => value.clone(),
            };
            sql = sql.replace(&format!("${}", k + 1), &literal);
        }
        assert_eq!(
            Some(sql.as_str()),
            s.read_rewrite.as_deref(),
            "{}",
            bound.sql
        );
    }
    a
}

/// Statement texts with literal slots: `{s}` a string, `{n}` a number.
const PATTERNS: &[&str] = &[
    "INSERT INTO derived_data_bars (symbol, ts, open, high, low, close, volume) VALUES ({s}, timestamptz {s} + {n} * interval {s}, 100 + {n} * 0.0001, {n}, {n}, {n}, {n}) ON CONFLICT (symbol, ts) DO UPDATE SET close = derived_data_bars.close + {n}, volume = derived_data_bars.volume + 1",
    "UPDATE derived_data_bars SET high = high + {n} WHERE symbol = {s} AND ts = timestamptz {s} + {n} * interval {s}",
    "UPDATE derived_data_bars d SET symbol = {s}, close = {n} WHERE d.symbol = {s} AND close > -{n} RETURNING d.close, {s} AS tag",
    "DELETE FROM derived_data_bars WHERE symbol = {s} AND close > {n} RETURNING close",
    "SELECT ts, close FROM derived_data_bars WHERE symbol = {s} AND close > {n} ORDER BY ts LIMIT {n}",
    "BEGIN; UPDATE derived_data_bars b SET close = {n} WHERE b.symbol = {s}; COMMIT",
    "INSERT INTO derived_data_bars VALUES ({s}, now(), {n}, {n}, {n}, {n}, {n}) /* a 'comment' 5 */ RETURNING symbol",
    "SELECT {s}, count(*) FROM derived_data_bars WHERE symbol IN ({s}, {s}) -- {s}\n AND close <> {n}",
    "WITH x AS (UPDATE derived_data_bars SET close = {n} RETURNING *) SELECT * FROM x WHERE symbol = {s}",
    "UPDATE derived_data_bars SET close = {n} WHERE symbol = E'D\\'X' OR symbol = {s}",
    "SET application_name = {s}; INSERT INTO derived_data_bars (symbol, ts, close) VALUES ({s}, {s}, {n})",
    "DELETE FROM derived_data_bars WHERE symbol = $1 AND ts < {s}::timestamptz AND volume = {n}",
    "UPDATE derived_data_bars SET close = {n} WHERE symbol = {s}; UPDATE derived_data_bars SET open = {n} WHERE symbol = {s}",
    "INSERT INTO derived_data_bars SELECT {s}, ts, open, high, low, close, volume + {n} FROM derived_data_bars WHERE symbol = {s}",
];

/// A string literal as a client writes it.
fn string_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ;'é\n_.:+-]{0,12}",
        Just("DXY".to_string()),
        Just("derived_data_bars".to_string()),
        Just("2026-01-01 00:00:00+00".to_string()),
        Just("1 minute".to_string()),
    ]
    .prop_map(|s| format!("'{}'", s.replace('\'', "''")))
}

fn number_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u32>().prop_map(|n| n.to_string()),
        (0u32..100_000, 0u32..10_000).prop_map(|(a, b)| format!("{a}.{b}")),
        Just("0".to_string()),
    ]
}

/// One instance of a pattern.
fn instance(pattern: &str) -> impl Strategy<Value = String> {
    let slots = pattern.matches("{s}").count() + pattern.matches("{n}").count();
    let pattern = pattern.to_string();
    proptest::collection::vec((string_literal(), number_literal()), slots).prop_map(move |lits| {
        let mut out = String::new();
        let mut rest = pattern.as_str();
        let mut lits = lits.into_iter();
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            let (s, n) = lits.next().unwrap_or_default();
            out.push_str(if rest[i..].starts_with("{s}") { &s } else { &n });
            rest = &rest[i + 3..];
        }
        out.push_str(rest);
        out
    })
}

fn two_instances() -> impl Strategy<Value = (String, String)> {
    proptest::sample::select(PATTERNS).prop_flat_map(|p| (instance(p), instance(p)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn a_filled_shape_equals_the_uncached_analysis((first, second) in two_instances()) {
        for mode in [MirrorMode::Rows, MirrorMode::Statements] {
            let a = analyzer(mode);
            for sql in [&first, &second, &first] {
                let cached = a.analyze(sql);
                let uncached = a.analyze_uncached(sql);
                prop_assert_eq!(unbound(&cached), uncached, "{}", sql);
            }
        }
    }
}

#[test]
fn the_bench_workload_is_served_from_shapes() {
    let a = analyzer(MirrorMode::Rows);
    for pattern in &PATTERNS[..5] {
        for m in 1..=3 {
            let sql = pattern
                .replace("{s}", &format!("'DXY{m}'"))
                .replace("{n}", &format!("{m}.5"));
            assert_eq!(unbound(&a.analyze(&sql)), a.analyze_uncached(&sql), "{sql}");
        }
    }
    // Each pattern: the first text builds the shape, the next two fill it.
    assert_eq!(a.shape_hits(), 10);
}

#[test]
fn every_pattern_has_a_shape() {
    for pattern in PATTERNS {
        let a = analyzer(MirrorMode::Statements);
        for m in 1..=2 {
            let sql = pattern
                .replace("{s}", &format!("'DXY{m}'"))
                .replace("{n}", &format!("{m}.5"));
            a.analyze(&sql);
        }
        // A literal in a comment is not a literal: the comment is part of the key.
        let expected = u64::from(!pattern.contains("-- {s}"));
        assert_eq!(a.shape_hits(), expected, "{pattern}");
    }
}

#[test]
fn a_read_the_secondary_serves_is_bound_from_its_shape() {
    let a = analyzer(MirrorMode::Rows);
    let text = |n: &str, limit: u32| {
        format!("SELECT ts, close FROM derived_data_bars WHERE symbol = 'DXY' AND close > {n} ORDER BY ts LIMIT {limit}")
    };
    a.analyze(&text("1.5", 3));
    let filled = a.analyze(&text("2.25", 4));
    assert_eq!(a.shape_hits(), 1);
    let bound = filled.read_bound().expect("a bound read");
    // The comparison's operand is a parameter typed as its literal (numeric); LIMIT's stays text.
    assert!(bound.sql.contains("close > $1"), "{}", bound.sql);
    assert!(bound.sql.contains("LIMIT 4"), "{}", bound.sql);
    assert_eq!(bound.types, [1700]);
    assert_eq!(bound.values, ["2.25"]);
    assert_eq!(unbound(&filled), a.analyze_uncached(&text("2.25", 4)));
}
