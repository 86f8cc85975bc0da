//! The rule model: one [`Rule`] per `[[table]]`, how it reads and mirrors, and the [`RuleSet`]
//! snapshot everything else looks rules up in. Built by `parse` and completed by the online
//! checks; nothing here touches a file or a database.

use std::collections::HashMap;
use std::sync::Arc;

use super::{check, Column, CompareRule, ReconcileRule, TableName};

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

    /// The read source a word of the rule files and the admin API names.
    pub fn parse(word: &str) -> Option<ReadSource> {
        match word {
            "primary" => Some(ReadSource::Primary),
            "shadow" => Some(ReadSource::Shadow),
            "secondary" => Some(ReadSource::Secondary),
            _ => None,
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
    /// `[table.reconcile]`: the per-group report a verify of this table writes, if any.
    pub reconcile: Option<ReconcileRule>,
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
        if let Some(rec) = &rule.reconcile {
            s.push_str(&format!(", {}", rec.summary()));
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
