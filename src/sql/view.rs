//! The mapping of one rule as SQL: a source column's value computed from a target row, a target
//! column's value computed from a source value, and the inline view that presents the target's
//! rows as the source's.
//!
//! Every rewrite is built from these few functions, so a read, a mirrored row and a rewritten
//! statement all agree on what the rule means.

use sqlparser::ast::{Ident, ObjectName};

use crate::rules::{quote_ident, Column, Rule, TableName};

/// A SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The source table an object name refers to (unquoted parts folded, default schema `public`).
pub fn resolve(name: &ObjectName) -> Option<TableName> {
    let parts: Vec<&Ident> = name.0.iter().map(|p| p.as_ident()).collect::<Option<_>>()?;
    let fold = |i: &Ident| match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_lowercase(),
    };
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
                .map(|(s, tv)| format!(" WHEN {} THEN {}", literal(tv), literal(s)))
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
                .map(|(s, tv)| format!(" WHEN {} THEN {}", literal(s), literal(tv)))
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
    if let Some(cond) = values_condition(rule, "") {
        sql.push_str(&format!(" WHERE {cond}"));
    }
    if let Some(filter) = &rule.filter {
        sql = format!("SELECT * FROM ({sql}) AS pgbridge_v WHERE ({filter})");
    }
    Some(sql)
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
             FROM public.data_bars WHERE timeframe = '1m' AND is_synthetic = true) AS pgbridge_v \
             WHERE (symbol = 'DXY')"
        );
    }
}
