//! Loads the rules path (one file, or every `*.toml` in a directory) into a [`RuleSet`].
//!
//! Problems from every file are gathered and sorted by position, so `rules check` prints them all
//! in the order a DBA reads the files. A source table claimed by two rules is a problem even when
//! the two rules are in different files.

use std::path::{Path, PathBuf};

use super::online;
use crate::config::PgUrl;
use crate::rules::parse::{parse_file, ParsedRule};
use crate::rules::{Problem, RuleSet, RulesError};

/// The rule files under `path`, in name order.
fn rule_files(path: &Path) -> Result<Vec<PathBuf>, Problem> {
    let unreadable = |e: std::io::Error| Problem {
        file: path.to_path_buf(),
        line: 1,
        col: 1,
        message: format!("cannot read the rules: {e}"),
    };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(unreadable)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(unreadable)? {
        let p = entry.map_err(unreadable)?.path();
        if p.extension().is_some_and(|e| e == "toml") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and checks every rule file without a database.
pub fn read_rules(path: &Path) -> (Vec<ParsedRule>, Vec<Problem>) {
    let files = match rule_files(path) {
        Ok(files) => files,
        Err(p) => return (Vec::new(), vec![p]),
    };
    let mut rules: Vec<ParsedRule> = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                problems.push(Problem {
                    file: file.clone(),
                    line: 1,
                    col: 1,
                    message: format!("cannot read the rule file: {e}"),
                });
                continue;
            }
        };
        let (parsed, found) = parse_file(&file, &text);
        problems.extend(found);
        for rule in parsed {
            match rules.iter().find(|r| r.rule.source == rule.rule.source) {
                Some(first) => problems.push(rule.problem(
                    "source",
                    format!(
                        "two rules for one source: `{}` already has the rule at {}",
                        rule.rule.source, first.rule.origin
                    ),
                )),
                None => rules.push(rule),
            }
        }
    }
    problems.sort();
    (rules, problems)
}

/// Loads and checks the rules without a database. The rules carry no column lists, so the read,
/// capture and apply rewrites are not available from them; `rules check --offline` uses this.
pub fn load_offline(path: &Path) -> Result<RuleSet, RulesError> {
    let (rules, problems) = read_rules(path);
    if !problems.is_empty() {
        return Err(RulesError::Invalid(problems));
    }
    Ok(RuleSet::new(rules.into_iter().map(|r| r.rule).collect()))
}

/// Loads the rules and checks them against the live schemas of both databases, recording each
/// rule's source and target columns. This is what `serve` runs, at start and on every reload.
pub async fn load_online(
    path: &Path,
    primary: &PgUrl,
    secondary: Option<&PgUrl>,
) -> Result<RuleSet, RulesError> {
    let (mut rules, problems) = read_rules(path);
    if !problems.is_empty() {
        return Err(RulesError::Invalid(problems));
    }
    let mut problems = online::check(&mut rules, primary, secondary).await?;
    if !problems.is_empty() {
        problems.sort();
        return Err(RulesError::Invalid(problems));
    }
    Ok(RuleSet::new(rules.into_iter().map(|r| r.rule).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_read_in_name_order_and_a_source_has_one_rule() {
        let dir = tempfile::tempdir().unwrap();
        let rule = "[[table]]\nsource = \"bars\"\ntarget = \"data_bars\"\n";
        std::fs::write(dir.path().join("b.toml"), rule).unwrap();
        std::fs::write(dir.path().join("a.toml"), rule).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a rule").unwrap();
        let (rules, problems) = read_rules(dir.path());
        assert_eq!(rules.len(), 1);
        assert!(
            rules[0].rule.origin.ends_with("a.toml:1"),
            "{}",
            rules[0].rule.origin
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].file.ends_with("b.toml"));
        assert!(problems[0].message.contains("already has the rule at"));
        let err = load_offline(&dir.path().join("missing")).unwrap_err();
        assert!(
            err.to_string().contains(":1:1: cannot read the rules: "),
            "{err}"
        );
    }
}
