//! The mapping of one rule as SQL: a source column's value computed from a target row, a target
//! column's value computed from a source value, and the inline view that presents the target's
//! rows as the source's.
//!
//! Every rewrite is built from these few functions, so a read, a mirrored row and a rewritten
//! statement all agree on what the rule means.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr, Ident, ObjectName, Query, TableAlias, TableFactor, Value, VisitorMut,
};

use crate::rules::{quote_ident, quote_literal, Column, Rule, TableName};

/// Points every reference to some tables somewhere else: the read rewrite's inline views
/// (`src/sql/read/mod.rs`), the write rewrite's write views (`src/sql/write_rewrite.rs`).
/// `to` gives a table's new name, or `None` to leave it. A reference (in FROM, JOIN, UPDATE,
/// DELETE, subqueries and CTE bodies) keeps the name it had as its alias, so `b.close`,
/// `derived_data_bars.close` and unqualified columns resolve as before, and
/// `public.derived_data_bars.close` loses its schema; a `WITH derived_data_bars AS (...)`
/// shadows the table and is left alone.
pub struct Retarget<F> {
    to: F,
    ctes: Vec<String>,
    /// How many references were pointed elsewhere.
    pub replaced: usize,
}

impl<F: FnMut(&TableName) -> Option<ObjectName>> Retarget<F> {
    pub fn new(to: F) -> Retarget<F> {
        Retarget {
            to,
            ctes: Vec::new(),
            replaced: 0,
        }
    }
}

impl<F: FnMut(&TableName) -> Option<ObjectName>> VisitorMut for Retarget<F> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.push(cte.alias.name.value.to_lowercase());
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let Some(table) = resolve(name) else {
            return ControlFlow::Continue(());
        };
        if name.0.len() == 1 && self.ctes.contains(&table.name) {
            return ControlFlow::Continue(());
        }
        let Some(new) = (self.to)(&table) else {
            return ControlFlow::Continue(());
        };
        let last = name.0.last().and_then(|p| p.as_ident()).cloned();
        if alias.is_none() {
            *alias = last.map(|name| TableAlias {
                explicit: true,
                name,
                columns: Vec::new(),
                at: None,
            });
        }
        *name = new;
        self.replaced += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        // `public.derived_data_bars.close`: the new reference is named by the table alone.
        if let Expr::CompoundIdentifier(parts) = e {
            if parts.len() == 3 {
                let name = TableName::new(&fold(&parts[0]), &fold(&parts[1]));
                if (self.to)(&name).is_some() {
                    parts.remove(0);
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// The source table an object name refers to (unquoted parts folded, default schema `public`).
pub fn resolve(name: &ObjectName) -> Option<TableName> {
    let parts: Vec<&Ident> = name.0.iter().map(|p| p.as_ident()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [t] => Some(TableName::new("public", &fold(t))),
        [s, t] | [_, s, t] => Some(TableName::new(&fold(s), &fold(t))),
        _ => None,
    }
}

fn target_type<'a>(rule: &'a Rule, target_col: &str) -> Option<&'a str> {
    let cols = rule.target_columns.as_ref()?;
    cols.iter()
        .find(|c| c.name == target_col)
        .map(|c| c.type_name.as_str())
}

/// The value of source column `col`, computed from the target row (`prefix` qualifies the
/// target's columns, e.g. `"t."` or `""`).
pub fn source_value(rule: &Rule, col: &Column, prefix: &str) -> String {
    let target_col = rule.target_column(&col.name);
    let t = format!("{prefix}{}", quote_ident(target_col));
    let value = match rule.translation(&col.name) {
        Some(pairs) => {
            let whens: String = pairs
                .iter()
                .map(|(s, tv)| format!(" WHEN {} THEN {}", quote_literal(tv), quote_literal(s)))
                .collect();
            format!("CASE {t}{whens} ELSE {t} END")
        }
        None => t,
    };
    match target_type(rule, target_col) {
        Some(ty) if ty != col.type_name => format!("CAST({value} AS {})", col.type_name),
        _ => value,
    }
}

/// The value to store in the target for source column `col`, given SQL for the source value.
pub fn target_value(rule: &Rule, col: &str, source_sql: &str) -> String {
    match rule.translation(col) {
        Some(pairs) => {
            let whens: String = pairs
                .iter()
                .map(|(s, tv)| format!(" WHEN {} THEN {}", quote_literal(s), quote_literal(tv)))
                .collect();
            format!("CASE {source_sql}{whens} ELSE {source_sql} END")
        }
        None => source_sql.to_string(),
    }
}

/// `timeframe = '1m' AND is_synthetic = true`: the target rows this rule owns.
pub fn values_condition(rule: &Rule, prefix: &str) -> Option<String> {
    let conds: Vec<String> = rule
        .values
        .iter()
        .map(|(c, v)| {
            if v.trim().eq_ignore_ascii_case("null") {
                format!("{prefix}{} IS NULL", quote_ident(c))
            } else {
                format!("{prefix}{} = {v}", quote_ident(c))
            }
        })
        .collect();
    (!conds.is_empty()).then(|| conds.join(" AND "))
}

/// The inline view over the target that presents the source's exact columns and rows; `None`
/// while the rule's columns are unknown (rules checked offline).
pub fn read_view(rule: &Rule) -> Option<String> {
    let columns = rule.source_columns.as_ref()?;
    let select: Vec<String> = columns
        .iter()
        .map(|c| format!("{} AS {}", source_value(rule, c, ""), quote_ident(&c.name)))
        .collect();
    let mut sql = format!("SELECT {} FROM {}", select.join(", "), rule.target.quoted());
    let conds: Vec<String> = [values_condition(rule, ""), target_filter(rule)]
        .into_iter()
        .flatten()
        .collect();
    if !conds.is_empty() {
        sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
    }
    if let Some(filter) = &rule.filter {
        sql = format!("SELECT * FROM ({sql}) AS pgbridge_v WHERE ({filter})");
    }
    Some(sql)
}

/// The rule's `where` in the target's terms, as far as it goes there: a condition that every
/// target row passing `where` through the view passes too (what cannot be put in target terms is
/// left out of an AND), so that the secondary can use the target's indexes; `where` itself
/// still decides, outside. `symbol = 'DXY'` with `DXY` translated to `DXY.IDX` becomes
/// `"symbol" IN ('DXY.IDX')`: the rows of the rule's on the target, which a target row holding
/// the untranslated `DXY` is not. `None` when nothing of it goes.
pub fn target_filter(rule: &Rule) -> Option<String> {
    let expr = crate::rules::check::parse_expression(rule.filter.as_deref()?).ok()?;
    to_target(rule, &expr)
}

fn to_target(rule: &Rule, e: &Expr) -> Option<String> {
    match e {
        // An OR comes out in parentheses, an AND needs none.
        Expr::Nested(inner) => to_target(rule, inner),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => match (to_target(rule, left), to_target(rule, right)) {
            (Some(a), Some(b)) => Some(format!("{a} AND {b}")),
            (a, b) => a.or(b),
        },
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Or,
            right,
        } => Some(format!(
            "({} OR {})",
            to_target(rule, left)?,
            to_target(rule, right)?
        )),
        Expr::BinaryOp { left, op, right } => comparison_to_target(rule, left, op, right),
        Expr::InList {
            expr,
            list,
            negated: false,
        } => in_list_to_target(rule, expr, list),
        _ => None,
    }
}

/// `col op value` in the target's terms: an equality through the translation, an order only
/// where no translation changes the values.
fn comparison_to_target(
    rule: &Rule,
    left: &Expr,
    op: &BinaryOperator,
    right: &Expr,
) -> Option<String> {
    let (Expr::Identifier(col), Expr::Value(v)) = (left, right) else {
        return None;
    };
    match op {
        BinaryOperator::Eq => equal_to(rule, col, &[&v.value]),
        BinaryOperator::NotEq
        | BinaryOperator::Lt
        | BinaryOperator::LtEq
        | BinaryOperator::Gt
        | BinaryOperator::GtEq => {
            let target = plain_target(rule, col)?;
            rule.translation(&fold(col))
                .is_none()
                .then(|| format!("{} {op} {}", quote_ident(target), v.value))
        }
        _ => None,
    }
}

/// `col IN (values...)` in the target's terms.
fn in_list_to_target(rule: &Rule, expr: &Expr, list: &[Expr]) -> Option<String> {
    let Expr::Identifier(col) = expr else {
        return None;
    };
    let values: Option<Vec<&Value>> = list
        .iter()
        .map(|e| match e {
            Expr::Value(v) => Some(&v.value),
            _ => None,
        })
        .collect();
    equal_to(rule, col, &values?)
}

/// The target column of source column `col` when the view passes it on without a cast.
fn plain_target<'a>(rule: &'a Rule, col: &Ident) -> Option<&'a str> {
    let name = fold(col);
    let source = rule
        .source_columns
        .as_ref()?
        .iter()
        .find(|c| c.name == name)?;
    let target = rule.target_column(&source.name);
    (target_type(rule, target)? == source.type_name).then_some(target)
}

/// The target rows whose view value of `col` is one of `values`.
fn equal_to(rule: &Rule, col: &Ident, values: &[&Value]) -> Option<String> {
    let target = plain_target(rule, col)?;
    let set: Vec<String> = match rule.translation(&fold(col)) {
        None => values.iter().map(|v| v.to_string()).collect(),
        Some(pairs) => {
            let mut set = Vec::new();
            for v in values {
                let Value::SingleQuotedString(s) = v else {
                    return None;
                };
                // A source value with a translation is its translation on the target (a target
                // row holding the untranslated value is no row of the rule's); any other is
                // itself, unless it is a translation of another (then no target row shows it).
                if let Some((_, tv)) = pairs.iter().find(|(src, _)| src == s) {
                    set.push(quote_literal(tv));
                } else if !pairs.iter().any(|(_, tv)| tv == s) {
                    set.push(quote_literal(s));
                }
            }
            set
        }
    };
    Some(match set.as_slice() {
        [] => "false".to_string(),
        _ => format!("{} IN ({})", quote_ident(target), set.join(", ")),
    })
}

/// An identifier as PostgreSQL folds it: lower case unless quoted.
pub(super) fn fold(i: &Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_lowercase(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rules::{MirrorMode, ReadSource};

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            type_name: ty.into(),
            category: 'X',
            not_null: true,
            has_default: false,
        }
    }

    /// The DXY rule as checked online against the DXY schemas.
    pub fn dxy_rule() -> Rule {
        let num = "numeric(18,6)";
        let source: Vec<Column> = [
            ("symbol", "text"),
            ("ts", "timestamp with time zone"),
            ("open", num),
            ("high", num),
            ("low", num),
            ("close", num),
            ("volume", "bigint"),
        ]
        .iter()
        .map(|(n, t)| col(n, t))
        .collect();
        let mut target = source.clone();
        target[5].name = "close_px".into();
        target.push(col("timeframe", "text"));
        target.push(col("is_synthetic", "boolean"));
        Rule {
            source: TableName::new("public", "derived_data_bars"),
            target: TableName::new("public", "data_bars"),
            key: vec!["symbol".into(), "ts".into()],
            filter: Some("symbol = 'DXY'".into()),
            reads: ReadSource::Primary,
            mirror: MirrorMode::Rows,
            columns: vec![("close".into(), "close_px".into())],
            values: vec![
                ("timeframe".into(), "'1m'".into()),
                ("is_synthetic".into(), "true".into()),
            ],
            translate: vec![("symbol".into(), vec![("DXY".into(), "DXY.IDX".into())])],
            compare: Default::default(),
            reconcile: None,
            source_columns: Some(source),
            target_columns: Some(target),
            conflict_key: Some(vec!["symbol".into(), "timeframe".into(), "ts".into()]),
            origin: "rules/dxy.toml:4".into(),
        }
    }

    #[test]
    fn the_dxy_view_maps_back_every_column() {
        assert_eq!(
            read_view(&dxy_rule()).unwrap(),
            "SELECT * FROM (SELECT CASE symbol WHEN 'DXY.IDX' THEN 'DXY' ELSE symbol END AS symbol, \
             ts AS ts, open AS open, high AS high, low AS low, close_px AS close, volume AS volume \
             FROM public.data_bars WHERE timeframe = '1m' AND is_synthetic = true \
             AND symbol IN ('DXY.IDX')) AS pgbridge_v WHERE (symbol = 'DXY')"
        );
    }

    #[test]
    fn the_where_goes_to_the_target_as_far_as_it_can() {
        let with = |filter: &str| {
            let mut rule = dxy_rule();
            rule.filter = Some(filter.into());
            target_filter(&rule)
        };
        assert_eq!(
            with("symbol IN ('DXY', 'DXY.IDX', 'EUR') AND volume > 0").as_deref(),
            // A target DXY.IDX is a source DXY: no source DXY.IDX comes from the target.
            Some("symbol IN ('DXY.IDX', 'EUR') AND volume > 0")
        );
        assert_eq!(
            with("(Symbol = 'DXY' OR volume <= 10) AND lower(symbol) = 'dxy'").as_deref(),
            Some("(symbol IN ('DXY.IDX') OR volume <= 10)")
        );
        // Order is not kept by a translation; a renamed column goes by its target name; what
        // does not go leaves no condition.
        assert_eq!(with("symbol > 'A'"), None);
        assert_eq!(with("close >= 1.5").as_deref(), Some("close_px >= 1.5"));
        assert_eq!(with("symbol = 'DXY' OR lower(symbol) = 'x'"), None);
        assert_eq!(with("symbol = 'DXY.IDX'").as_deref(), Some("false"));
    }
}
