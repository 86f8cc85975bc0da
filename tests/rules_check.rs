//! `pgbridge rules check`, as a DBA runs it: the exit code and the exact lines printed.

mod sql_support;

use std::path::Path;
use std::process::{Command, Output};

use sql_support::{config_dir, dxy_pair, DXY_RULES};

fn rules_check(dir: &Path, offline: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgbridge"));
    cmd.args(["rules", "check", "--config"])
        .arg(dir.join("pgbridge.toml"));
    if offline {
        cmd.arg("--offline");
    }
    cmd.output().unwrap()
}

fn stderr_lines(out: &Output, dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| l.replace(&prefix, ""))
        .collect()
}

#[test]
fn the_dxy_rules_are_valid_offline() {
    let dir = config_dir("p", "s", DXY_RULES);
    let out = rules_check(dir.path(), true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with(
        "derived_data_bars -> data_bars: key (symbol, ts), where symbol = 'DXY', reads primary, mirror rows, 1 renamed, 2 constant, 1 translated\n"
    ), "{stdout}");
}

#[test]
fn every_offline_problem_is_printed_with_its_position() {
    let rules = r#"[[table]]
source = "derived_data_bars"
target = "data_bars"
key = ["symbol", 3]
where = "symbol = "
reads = "sometimes"
colour = "red"

[table.columns]
open = "o"
high = "o"

[table.values]
timeframe = "1m"
o = "1"

[table.translate.symbol]
"A" = "X"
"B" = "X"

[[table]]
target = "t"

[[table]]
source = "Derived_Data_Bars"
target = "x"
where = "1 + 1"
mirror = "rows"
"#;
    let dir = config_dir("p", "s", rules);
    let out = rules_check(dir.path(), true);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&out, dir.path()),
        [
            "rules/dxy.toml:4:18: `key` entries must be strings (column names)",
            "rules/dxy.toml:5:9: `where`: not a valid SQL expression: Expected: an expression, found: EOF",
            "rules/dxy.toml:6:9: `reads` must be primary, shadow or secondary, not `sometimes`",
            "rules/dxy.toml:7:1: unknown key `colour`; expected one of: source, target, key, where, reads, mirror, columns, values, translate, compare, reconcile",
            "rules/dxy.toml:11:8: column `o` is the rename of both `open` and `high`",
            "rules/dxy.toml:14:13: `values.timeframe`: `1m` is not a SQL literal; write a quoted string ('1m'), a number, true/false or NULL",
            "rules/dxy.toml:15:1: `values.o`: column `open` is already renamed to `o`",
            "rules/dxy.toml:19:7: `translate.symbol` is not one-to-one: `B` and `A` both become `X`",
            "rules/dxy.toml:21:1: missing `source`: every [[table]] needs one",
            "rules/dxy.toml:27:9: `where`: `1 + 1` is not a boolean condition",
            "rules/dxy.toml:28:10: mirror = \"rows\" needs a `key`: the columns that identify a row",
            "pgbridge: 11 problem(s) in the rules",
        ]
    );
}

#[test]
fn two_rules_for_one_source_across_files() {
    let dir = config_dir("p", "s", DXY_RULES);
    std::fs::write(
        dir.path().join("rules/zz.toml"),
        "[[table]]\nsource = \"public.DERIVED_DATA_BARS\"\ntarget = \"other\"\n",
    )
    .unwrap();
    let out = rules_check(dir.path(), true);
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out, dir.path());
    assert_eq!(
        lines[0],
        "rules/zz.toml:2:10: two rules for one source: `derived_data_bars` already has the rule at rules/dxy.toml:22"
    );
}

#[tokio::test]
async fn the_dxy_rules_are_valid_against_the_dxy_schemas() {
    let (p, s) = dxy_pair().await;
    let dir = config_dir(&p, &s, DXY_RULES);
    let out = tokio::task::spawn_blocking(move || (rules_check(dir.path(), false), dir))
        .await
        .unwrap()
        .0;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn online_problems_name_the_rule_line() {
    let (p, s) = dxy_pair().await;
    let rules = r#"[[table]]
source = "derived_data_bars"
target = "data_bars"
key = ["symbol", "ts"]
where = "sym = 'DXY'"

[table.columns]
close = "close_price"

[table.values]
is_synthetic = "'maybe'"

[[table]]
source = "instruments"
target = "no_such_table"

[[table]]
source = "no_such_source"
target = "data_bars"
"#;
    let dir = config_dir(&p, &s, rules);
    let out = tokio::task::spawn_blocking(move || {
        let out = rules_check(dir.path(), false);
        (stderr_lines(&out, dir.path()), out.status.code())
    })
    .await
    .unwrap();
    assert_eq!(out.1, Some(1));
    assert_eq!(
        out.0,
        [
            "rules/dxy.toml:3:10: target column `close_px` is NOT NULL without a default, and neither a source column nor `values` sets it",
            "rules/dxy.toml:3:10: target column `timeframe` is NOT NULL without a default, and neither a source column nor `values` sets it",
            "rules/dxy.toml:4:7: (symbol, ts, is_synthetic) does not contain a primary key or unique index of target `data_bars`: the mirror's upsert needs one",
            "rules/dxy.toml:5:9: `where` is not valid on the source: column \"sym\" does not exist",
            "rules/dxy.toml:8:9: source column `close` has no column `close_price` in target table `data_bars`",
            "rules/dxy.toml:11:16: `'maybe'` is not a boolean: invalid input syntax for type boolean: \"maybe\"",
            "rules/dxy.toml:15:10: target table `no_such_table` does not exist on the secondary",
            "rules/dxy.toml:18:10: source table `no_such_source` does not exist on the primary",
            "pgbridge: 8 problem(s) in the rules",
        ]
    );
}

#[tokio::test]
async fn a_compare_section_is_checked_and_summarized() {
    let (p, s) = dxy_pair().await;
    let section = "\n[table.compare]\nfloat_tolerance_abs = 0.001\nignore_columns = [\"volume\", \"no_such\"]\n";
    let dir = config_dir(&p, &s, &format!("{DXY_RULES}{section}"));
    let (online, offline) = tokio::task::spawn_blocking(move || {
        let online = rules_check(dir.path(), false);
        let offline = rules_check(dir.path(), true);
        (
            (stderr_lines(&online, dir.path()), online.status.code()),
            offline,
        )
    })
    .await
    .unwrap();
    assert_eq!(
        online,
        (
            vec![
                "rules/dxy.toml:42:29: column `no_such` does not exist in source table `derived_data_bars`".to_string(),
                "pgbridge: 1 problem(s) in the rules".to_string(),
            ],
            Some(1)
        )
    );
    let stdout = String::from_utf8_lossy(&offline.stdout);
    assert_eq!(offline.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with(
            "derived_data_bars -> data_bars: key (symbol, ts), where symbol = 'DXY', \
             reads primary, mirror rows, 1 renamed, 2 constant, 1 translated, \
             compare (abs 0.001, ignores volume, no_such)\n"
        ),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_reconcile_section_is_checked_and_summarized() {
    let (p, s) = dxy_pair().await;
    let section = "\n[table.reconcile]\ngroup_by = [\"symbol\", \"date_trunc('day', ts)\"]\n\
                   metrics = [\"count\", \"sum(volume)\", \"max(no_such)\", \"sum(symbol)\"]\n";
    let dir = config_dir(&p, &s, &format!("{DXY_RULES}{section}"));
    let (online, offline) = tokio::task::spawn_blocking(move || {
        let online = rules_check(dir.path(), false);
        let offline = rules_check(dir.path(), true);
        (
            (stderr_lines(&online, dir.path()), online.status.code()),
            offline,
        )
    })
    .await
    .unwrap();
    assert_eq!(
        online,
        (
            vec![
                "rules/dxy.toml:42:36: `max(no_such)`: column `no_such` does not exist in source table `derived_data_bars`".to_string(),
                "rules/dxy.toml:42:52: `sum(symbol)`: column `symbol` is text; sum needs a number or an interval".to_string(),
                "pgbridge: 2 problem(s) in the rules".to_string(),
            ],
            Some(1)
        )
    );
    let stdout = String::from_utf8_lossy(&offline.stdout);
    assert_eq!(offline.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with(
            "derived_data_bars -> data_bars: key (symbol, ts), where symbol = 'DXY', \
             reads primary, mirror rows, 1 renamed, 2 constant, 1 translated, \
             reconcile (2 groups, 4 metrics)\n"
        ),
        "{stdout}"
    );
}

#[test]
fn an_unreachable_database_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/dxy.toml"), DXY_RULES).unwrap();
    std::fs::write(
        dir.path().join("pgbridge.toml"),
        "[primary]\nurl = \"postgres://pgbridge@127.0.0.1:1/x\"\n",
    )
    .unwrap();
    let out = rules_check(dir.path(), false);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "pgbridge: cannot reach the primary database: postgres://pgbridge@127.0.0.1:1/x"
        ),
        "{stderr}"
    );
}
