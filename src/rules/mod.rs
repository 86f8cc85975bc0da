//! The rule files DBAs write under `rules/` (CONTRACT.md, "Rule files"), checked and held as one
//! immutable snapshot.
//!
//! A rule says how rows of a legacy `source` table correspond to rows of a `target` table in the
//! secondary. Everything else in pgbridge (routing, the SQL rewrites, mirroring) reads rules only
//! through a [`RuleSet`] snapshot, which is swapped atomically on reload so a statement always sees
//! one consistent set of rules.
//!
//! - [`parse`] reads one file into rules, keeping every value's position for error messages;
//!   `sections` reads the key array and the columns, values and translate tables.
//! - `name` folds and quotes table and column names as PostgreSQL does.
//! - `compare` reads `[table.compare]`, the table's own shadow-comparison settings.
//! - [`check`] holds the checks that need no database (SQL expressions, literals, one-to-one).
//! - [`live`] touches the outside world: `load` reads a file or a directory of files and gathers
//!   every problem, `online` checks rules against the live schemas (`schema` reads them) and
//!   records the columns the rewrites need, [`reload`] watches the rules path and SIGHUP and swaps
//!   in each valid new set.

pub mod check;
mod compare;
pub mod live;
mod name;
pub mod parse;
mod sections;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use compare::CompareRule;
pub use live::load::{load_offline, load_online};
pub use live::reload::{self, watch};
pub use live::schema::{Column, TableSchema};
pub(crate) use name::split_identifier;
pub use name::{quote_ident, quote_literal, TableName};

/// A problem in a rule file, displayed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Why a set of rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The rules are wrong; every problem is listed.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
    /// A database needed for the online checks could not be reached.
    #[error("cannot reach the {which} database: {message}")]
    Unreachable {
        which: &'static str,
        message: String,
    },
}

/// Where reads of a source table are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    Primary,
    Shadow,
    Secondary,
}

impl ReadSource {
    /// The word of the rule files and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadSource::Primary => "primary",
            ReadSource::Shadow => "shadow",
            ReadSource::Secondary => "secondary",
        }
    }
}

impl MirrorMode {
    /// The word of the rule files and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorMode::Rows => "rows",
            MirrorMode::Statements => "statements",
            MirrorMode::Off => "off",
        }
    }
}

/// How writes to a source table reach the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorMode {
    /// Row images captured on the primary, applied as key-addressed upserts and deletes.
    Rows,
    /// The statement itself rewritten to the target.
    Statements,
    Off,
}

/// One `[[table]]`: how rows of `source` correspond to rows of `target`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub source: TableName,
    pub target: TableName,
    /// Source columns that identify a row.
    pub key: Vec<String>,
    /// Which source rows belong to the migration: a boolean SQL expression over source columns.
    pub filter: Option<String>,
    pub reads: ReadSource,
    pub mirror: MirrorMode,
    /// Renames, source column to target column.
    pub columns: Vec<(String, String)>,
    /// Constant target columns: column and SQL literal.
    pub values: Vec<(String, String)>,
    /// Value translations of source columns: column and (source value, target value) pairs.
    pub translate: Vec<(String, Vec<(String, String)>)>,
    /// `[table.compare]`: this table's shadow comparison settings, over `[shadow]`'s.
    pub compare: CompareRule,
    /// The source's columns in table order, known once the rule was checked online.
    pub source_columns: Option<Vec<Column>>,
    /// The target's columns in table order, known once the rule was checked online.
    pub target_columns: Option<Vec<Column>>,
    /// The target's unique key within [`Rule::target_key`], the `ON CONFLICT` columns of the
    /// mirror's upserts; known once the rule was checked online.
    pub conflict_key: Option<Vec<String>>,
    /// The file and line the rule starts on, for logs.
    pub origin: String,
}

impl Rule {
    /// A one-line summary of a checked rule, as `rules check` prints it.
    pub fn summary(&self) -> String {
        let rule = self;
        let mut s = format!("{} -> {}:", rule.source, rule.target);
        if !rule.key.is_empty() {
            s.push_str(&format!(" key ({})", rule.key.join(", ")));
        }
        if let Some(f) = &rule.filter {
            s.push_str(&format!(", where {f}"));
        }
        s.push_str(&format!(
            ", reads {}, mirror {}",
            format!("{:?}", rule.reads).to_lowercase(),
            format!("{:?}", rule.mirror).to_lowercase()
        ));
        let counts = [
            (rule.columns.len(), "renamed"),
            (rule.values.len(), "constant"),
            (rule.translate.len(), "translated"),
        ];
        for (n, what) in counts {
            if n > 0 {
                s.push_str(&format!(", {n} {what}"));
            }
        }
        if !rule.compare.is_empty() {
            s.push_str(&format!(", {}", rule.compare.summary()));
        }
        s
    }

    /// The target column a source column is stored in.
    pub fn target_column<'a>(&'a self, source_column: &'a str) -> &'a str {
        self.columns
            .iter()
            .find(|(s, _)| s == source_column)
            .map_or(source_column, |(_, t)| t.as_str())
    }

    /// The translation pairs of a source column, if it has any.
    pub fn translation(&self, source_column: &str) -> Option<&[(String, String)]> {
        self.translate
            .iter()
            .find(|(c, _)| c == source_column)
            .map(|(_, pairs)| pairs.as_slice())
    }

    /// Whether a row's membership in the rule is decided by its key alone: no `where`, or one
    /// over key columns only. Then an UPDATE that keeps a row's key keeps it in (or out of) the
    /// migration, and the target must already have every row such an UPDATE changes.
    pub fn membership_follows_key(&self) -> bool {
        let Some(filter) = &self.filter else {
            return true;
        };
        let Ok(expr) = check::where_expression(filter) else {
            return false;
        };
        let mut on_key = true;
        let _ = sqlparser::ast::visit_expressions(&expr, |e| {
            if let sqlparser::ast::Expr::Identifier(i) = e {
                let name = match i.quote_style {
                    Some(_) => i.value.clone(),
                    None => i.value.to_lowercase(),
                };
                on_key &= self.key.contains(&name);
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        on_key
    }

    /// The target's key: the mapped key columns followed by the `values` columns.
    pub fn target_key(&self) -> Vec<String> {
        let mut key: Vec<String> = self
            .key
            .iter()
            .map(|k| self.target_column(k).to_string())
            .collect();
        key.extend(self.values.iter().map(|(c, _)| c.clone()));
        key
    }
}

/// An immutable snapshot of every rule, looked up by source table.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    by_source: HashMap<TableName, usize>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        let rules: Vec<Arc<Rule>> = rules.into_iter().map(Arc::new).collect();
        let by_source = rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.source.clone(), i))
            .collect();
        RuleSet { rules, by_source }
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule for a source table, given as SQL would name it (`Derived_Data_Bars`,
    /// `public.derived_data_bars`, `"derived_data_bars"`).
    pub fn lookup(&self, name: &str) -> Option<&Arc<Rule>> {
        self.get(&TableName::parse(name)?)
    }

    /// The rule for an already resolved source table name.
    pub fn get(&self, name: &TableName) -> Option<&Arc<Rule>> {
        self.by_source.get(name).map(|&i| &self.rules[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_like_postgresql() {
        let t = TableName::parse("Derived_Data_Bars").unwrap();
        assert_eq!(t, TableName::new("public", "derived_data_bars"));
        let t = TableName::parse("\"Odd\"\"Name\".x").unwrap();
        assert_eq!(t, TableName::new("Odd\"Name", "x"));
        assert!(TableName::parse("a.b.c").is_none());
        assert!(TableName::parse("bad name").is_none());
        assert_eq!(quote_ident("Odd"), "\"Odd\"");
        assert_eq!(quote_ident("close_px"), "close_px");
        assert_eq!(quote_ident("order"), "\"order\"");
    }

    #[test]
    fn membership_follows_the_key_when_the_where_names_only_key_columns() {
        let mut rule = crate::sql::view::tests::dxy_rule();
        assert!(
            rule.membership_follows_key(),
            "symbol = 'DXY' over key (symbol, ts)"
        );
        rule.filter = Some("Symbol IN ('DXY', 'EUR') AND ts > '2020-01-01'".into());
        assert!(rule.membership_follows_key());
        rule.filter = Some("symbol = 'DXY' AND volume > 0".into());
        assert!(!rule.membership_follows_key());
        rule.filter = None;
        assert!(rule.membership_follows_key());
    }
}
