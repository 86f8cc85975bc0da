//! The sections of a `[[table]]` that are more than one value: the `key` array, the
//! `[table.columns]` and `[table.values]` maps, and `[table.translate.COLUMN]` tables. Each entry
//! keeps its spans so later checks can point at it.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::parse::{column_name, field, FileCtx};

pub(super) fn parse_key(ctx: &mut FileCtx, t: &DeTable) -> Option<Vec<String>> {
    let (_, v) = field(t, "key")?;
    let DeValue::Array(items) = v.get_ref() else {
        ctx.problem(
            v.span(),
            format!(
                "`key` must be an array of column names, found {}",
                v.get_ref().type_str()
            ),
        );
        return None;
    };
    if items.is_empty() {
        ctx.problem(v.span(), "`key` must name at least one column");
        return None;
    }
    let mut key: Vec<String> = Vec::new();
    for item in items.iter() {
        let DeValue::String(s) = item.get_ref() else {
            ctx.problem(item.span(), "`key` entries must be strings (column names)");
            continue;
        };
        let Some(col) = column_name(ctx, s, item.span()) else {
            continue;
        };
        if key.contains(&col) {
            ctx.problem(item.span(), format!("key column `{col}` is listed twice"));
        } else {
            key.push(col);
        }
    }
    Some(key)
}

/// `[table.columns]` or `[table.values]`: (key, value, key span, value span).
pub type StringMap = Vec<(String, String, Range<usize>, Range<usize>)>;

pub(super) fn string_map(ctx: &mut FileCtx, t: &DeTable, key: &str) -> StringMap {
    let mut out = Vec::new();
    let Some((_, v)) = field(t, key) else {
        return out;
    };
    let DeValue::Table(map) = v.get_ref() else {
        ctx.problem(
            v.span(),
            format!("`{key}` must be a table: write `[table.{key}]`"),
        );
        return out;
    };
    for (k, val) in map.iter() {
        let Some(col) = column_name(ctx, k.get_ref(), k.span()) else {
            continue;
        };
        match val.get_ref() {
            DeValue::String(s) => out.push((col, s.to_string(), k.span(), val.span())),
            other => ctx.problem(
                val.span(),
                format!(
                    "`{key}.{}` must be a string, found {}",
                    k.get_ref(),
                    other.type_str()
                ),
            ),
        }
    }
    out
}

/// `[table.translate.COLUMN]`: column, (source value, target value) pairs, column span.
pub type Translations = Vec<(String, Vec<(String, String)>, Range<usize>)>;

pub(super) fn parse_translate(ctx: &mut FileCtx, t: &DeTable) -> Translations {
    let mut out = Vec::new();
    let Some((_, v)) = field(t, "translate") else {
        return out;
    };
    let DeValue::Table(cols) = v.get_ref() else {
        ctx.problem(
            v.span(),
            "`translate` must be a table: write `[table.translate.COLUMN]`",
        );
        return out;
    };
    for (col_key, map) in cols.iter() {
        let Some(col) = column_name(ctx, col_key.get_ref(), col_key.span()) else {
            continue;
        };
        let DeValue::Table(map) = map.get_ref() else {
            ctx.problem(
                map.span(),
                format!("`translate.{col}` must be a table of source value = target value"),
            );
            continue;
        };
        let pairs = translation_pairs(ctx, &col, map);
        out.push((col, pairs, col_key.span()));
    }
    out
}

fn translation_pairs(ctx: &mut FileCtx, col: &str, map: &DeTable) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in map.iter() {
        let target = match v.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(i) => i.as_str().to_string(),
            DeValue::Boolean(b) => b.to_string(),
            other => {
                ctx.problem(
                    v.span(),
                    format!(
                        "`translate.{col}` values must be strings, found {}",
                        other.type_str()
                    ),
                );
                continue;
            }
        };
        if let Some((other, _)) = pairs.iter().find(|(_, t)| *t == target) {
            ctx.problem(
                v.span(),
                format!(
                    "`translate.{col}` is not one-to-one: `{}` and `{other}` both become `{target}`",
                    k.get_ref()
                ),
            );
            continue;
        }
        pairs.push((k.get_ref().to_string(), target));
    }
    pairs
}
