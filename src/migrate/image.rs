//! The rule's image of a key range, or of some keys, read on either side: on the primary from
//! the source table, on the secondary from the target seen through the rule (the inline view
//! that reads of the source served there use, src/sql/view.rs), so that both sides answer in
//! the source's columns, names and types. Keys come first, in binary (their canonical form) and
//! as text; then every source column, decoded as shadow reads decode values.

use bytes::Bytes;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::diff::Image;
use super::JobError;
use crate::divergence::compare::canon;
use crate::mirror::apply::{canonical, Raw};
use crate::rules::{quote_ident, Rule};

/// Which side a read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Primary,
    Secondary,
}

/// A key's text values, in rule key order.
pub type KeyText = Vec<Option<String>>;

/// What to read: a key range `(after, upto]` (either end open), or exactly some keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    pub after: Option<KeyText>,
    pub upto: Option<KeyText>,
    pub keys: Option<Vec<KeyText>>,
}

/// A query and its text parameters.
pub struct Query {
    pub sql: String,
    pub params: Vec<Option<String>>,
}

/// The relation a side reads the rule's rows from.
pub fn from_clause(rule: &Rule, side: Side) -> Result<String, JobError> {
    match side {
        Side::Primary => Ok(rule.source.quoted()),
        Side::Secondary => crate::sql::view::read_view(rule)
            .map(|v| format!("({v}) AS pgbridge_src"))
            .ok_or_else(|| JobError::Unchecked(rule.source.to_string())),
    }
}

/// The condition that selects `scope` within the rule's `where` (the secondary's view applies
/// `where` itself), with its parameters.
pub fn condition(rule: &Rule, side: Side, scope: &Scope) -> Result<Query, JobError> {
    let mut conds: Vec<String> = match (side, &rule.filter) {
        (Side::Primary, Some(f)) => vec![format!("({f})")],
        _ => Vec::new(),
    };
    let mut params = Vec::new();
    let keys = key_list(rule);
    // Key columns both ends share are one value each: `symbol = $1 AND (ts) > ($2) AND (ts) <=
    // ($3)` lets the secondary use the target's index through the view even when `symbol` is
    // translated there (a comparison of rows cannot go through the translation).
    let shared = shared_prefix(rule, scope);
    for i in 0..shared {
        let value = &scope.after.as_ref().expect("shared ends")[i..=i];
        let p = column_placeholders(rule, &mut params, &rule.key[i..=i], value)?;
        conds.push(format!("{} = {p}", quote_ident(&rule.key[i])));
    }
    let rest = &rule.key[shared..];
    let rest_list: Vec<String> = rest.iter().map(|k| quote_ident(k)).collect();
    let rest_list = rest_list.join(", ");
    if let Some(after) = &scope.after {
        let p = column_placeholders(rule, &mut params, rest, &after[shared..])?;
        conds.push(format!("({rest_list}) > ({p})"));
    }
    if let Some(upto) = &scope.upto {
        let p = column_placeholders(rule, &mut params, rest, &upto[shared..])?;
        conds.push(format!("({rest_list}) <= ({p})"));
    }
    if let Some(list) = &scope.keys {
        let tuples = tuples(rule, &mut params, list)?;
        match tuples.is_empty() {
            true => conds.push("false".into()),
            false => conds.push(format!("({keys}) IN ({})", tuples.join(", "))),
        }
    }
    Ok(Query {
        sql: conds.join(" AND "),
        params,
    })
}

/// `($1::text::text, $2::text::timestamptz)` per key, the values pushed onto `params`.
pub fn tuples(
    rule: &Rule,
    params: &mut Vec<Option<String>>,
    keys: &[KeyText],
) -> Result<Vec<String>, JobError> {
    keys.iter()
        .map(|k| placeholders(rule, params, k).map(|p| format!("({p})")))
        .collect()
}

fn key_list(rule: &Rule) -> String {
    let keys: Vec<String> = rule.key.iter().map(|k| quote_ident(k)).collect();
    keys.join(", ")
}

/// How many leading key columns a range's two ends have the same (non-NULL) value in; at most
/// all but one.
fn shared_prefix(rule: &Rule, scope: &Scope) -> usize {
    match (&scope.after, &scope.upto) {
        (Some(a), Some(u)) if a.len() == rule.key.len() && u.len() == rule.key.len() => a
            .iter()
            .zip(u)
            .take_while(|(x, y)| x == y && x.is_some())
            .count()
            .min(rule.key.len() - 1),
        _ => 0,
    }
}

/// `$3::text::timestamptz, ...` for one key, its values pushed onto `params`.
fn placeholders(
    rule: &Rule,
    params: &mut Vec<Option<String>>,
    key: &KeyText,
) -> Result<String, JobError> {
    column_placeholders(rule, params, &rule.key, key)
}

/// `$3::text::timestamptz, ...` for the values of key columns `names`, pushed onto `params`.
fn column_placeholders(
    rule: &Rule,
    params: &mut Vec<Option<String>>,
    names: &[String],
    key: &[Option<String>],
) -> Result<String, JobError> {
    if key.len() != names.len() {
        return Err(JobError::Corrupt(format!("a key of {} values", key.len())));
    }
    let cols = rule
        .source_columns
        .as_ref()
        .ok_or_else(|| JobError::Unchecked(rule.source.to_string()))?;
    let mut out = Vec::with_capacity(key.len());
    for (name, value) in names.iter().zip(key) {
        let ty = cols
            .iter()
            .find(|c| &c.name == name)
            .map_or("text", |c| c.type_name.as_str());
        params.push(value.clone());
        out.push(format!("${}::text::{ty}", params.len()));
    }
    Ok(out.join(", "))
}

/// `SELECT keys, keys::text, columns FROM ... WHERE ... [ORDER BY keys LIMIT n]`.
pub fn image_query(
    rule: &Rule,
    side: Side,
    scope: &Scope,
    limit: Option<i64>,
) -> Result<Query, JobError> {
    let cols = rule
        .source_columns
        .as_ref()
        .ok_or_else(|| JobError::Unchecked(rule.source.to_string()))?;
    let keys = key_list(rule);
    let texts: Vec<String> = rule
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{}::text AS pgbridge_k{i}", quote_ident(k)))
        .collect();
    let values: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} AS pgbridge_c{i}", quote_ident(&c.name)))
        .collect();
    let cond = condition(rule, side, scope)?;
    let mut sql = format!(
        "SELECT {keys}, {}, {} FROM {}",
        texts.join(", "),
        values.join(", "),
        from_clause(rule, side)?
    );
    if !cond.sql.is_empty() {
        sql.push_str(&format!(" WHERE {}", cond.sql));
    }
    if let Some(n) = limit {
        sql.push_str(&format!(" ORDER BY {keys} LIMIT {n}"));
    }
    Ok(Query {
        sql,
        params: cond.params,
    })
}

/// A query's text parameters as tokio-postgres takes them.
pub fn params(q: &Query) -> Vec<&(dyn ToSql + Sync)> {
    q.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// Runs an image query: its rows decoded.
pub async fn read(
    client: &Client,
    rule: &Rule,
    q: &Query,
) -> Result<Vec<Image>, tokio_postgres::Error> {
    let rows = client.query(&q.sql, &params(q)).await?;
    let k = rule.key.len();
    rows.iter()
        .map(|r| {
            let key = canonical(r, k)?;
            let key_text = (k..2 * k)
                .map(|i| r.try_get::<_, Option<String>>(i))
                .collect::<Result<_, _>>()?;
            let values = (2 * k..r.len())
                .map(|i| {
                    let raw = r.try_get::<_, Option<Raw>>(i)?;
                    let oid = r.columns()[i].type_().oid();
                    Ok(canon(oid, 1, raw.map(|b| Bytes::from(b.0)).as_ref()))
                })
                .collect::<Result<_, tokio_postgres::Error>>()?;
            Ok(Image {
                key,
                key_text,
                values,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::view::tests::dxy_rule;

    fn key(symbol: &str, ts: &str) -> KeyText {
        vec![Some(symbol.into()), Some(ts.into())]
    }

    #[test]
    fn a_range_is_read_in_key_order_on_the_primary() {
        let rule = dxy_rule();
        let scope = Scope {
            after: Some(key("DXY", "2026-01-01")),
            upto: Some(key("DXY", "2026-02-01")),
            keys: None,
        };
        let q = image_query(&rule, Side::Primary, &scope, Some(10)).unwrap();
        assert!(
            q.sql.starts_with(
                "SELECT symbol, ts, symbol::text AS pgbridge_k0, ts::text AS pgbridge_k1, \
                 symbol AS pgbridge_c0, ts AS pgbridge_c1,"
            ),
            "{}",
            q.sql
        );
        assert!(
            q.sql.ends_with(
                "FROM public.derived_data_bars WHERE (symbol = 'DXY') AND symbol = $1::text::text \
                 AND (ts) > ($2::text::timestamp with time zone) AND (ts) <= \
                 ($3::text::timestamp with time zone) ORDER BY symbol, ts LIMIT 10"
            ),
            "{}",
            q.sql
        );
        assert_eq!(
            q.params.len(),
            3,
            "the symbol both ends share is given once"
        );
        let apart = Scope {
            after: Some(key("ABC", "2026-01-01")),
            upto: Some(key("DXY", "2026-02-01")),
            keys: None,
        };
        let q = image_query(&rule, Side::Primary, &apart, None).unwrap();
        assert!(
            q.sql
                .contains("(symbol, ts) > ($1::text::text, $2::text::timestamp"),
            "{}",
            q.sql
        );
        assert_eq!(q.params.len(), 4);
    }

    #[test]
    fn the_secondary_reads_the_target_through_the_rule() {
        let rule = dxy_rule();
        let scope = Scope {
            keys: Some(vec![key("DXY", "2026-01-01"), key("DXY", "2026-01-02")]),
            ..Scope::default()
        };
        let q = image_query(&rule, Side::Secondary, &scope, None).unwrap();
        assert!(q.sql.contains("FROM (SELECT "), "{}", q.sql);
        assert!(q.sql.contains("FROM public.data_bars"), "{}", q.sql);
        assert!(
            q.sql.ends_with(
                ") AS pgbridge_src WHERE (symbol, ts) IN (($1::text::text, \
                 $2::text::timestamp with time zone), ($3::text::text, \
                 $4::text::timestamp with time zone))"
            ),
            "{}",
            q.sql
        );
        let none = Scope {
            keys: Some(Vec::new()),
            ..Scope::default()
        };
        let q = image_query(&rule, Side::Secondary, &none, None).unwrap();
        assert!(q.sql.ends_with("WHERE false"), "{}", q.sql);
    }
}
