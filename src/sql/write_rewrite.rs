//! The write rewrite: a statement on a table whose writes are on the secondary, pointed at the
//! table's write view ([`super::write_view`]).
//!
//! Every reference to a switched source table (the INSERT, UPDATE or DELETE target, COPY FROM's
//! table, and every read of it in FROM, USING, subqueries and CTE bodies, so that a transaction
//! reads its own writes) becomes the write view, keeping the name it had as its alias so that
//! `derived_data_bars.close` still resolves. `ON CONFLICT` is taken off an INSERT, which then
//! goes to the sibling view that upserts as the clause asked ([`super::write_view::mode_view_name`]):
//! `DO NOTHING`, or `DO UPDATE SET c = EXCLUDED.c, ...` on the rule's key. What the view cannot
//! do as the source table would is refused with a message rather than done differently:
//! another conflict target, a `DO UPDATE` with a `WHERE` or an assignment other than
//! `EXCLUDED` of the same column, TRUNCATE. The statement is re-rendered (docs/DESIGN.md,
//! principle 3: statements for the secondary may be).

use std::collections::HashSet;
use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use sqlparser::ast::{
    AssignmentTarget, ConflictTarget, CopySource, Expr, Ident, ObjectName, ObjectNamePart,
    OnConflictAction, OnInsert, Statement, TableAliasWithoutColumns, TableObject, VisitMut,
};

use super::view::{fold, resolve, Retarget};
use super::write_view::{mode_view_name, view_name};
use crate::rules::{Rule, RuleSet, TableName};

/// What the rewrite made of one statement.
#[derive(Debug, PartialEq, Eq)]
pub enum Rewritten {
    /// It names no switched table.
    Untouched,
    /// The statement for the write views, and the upsert modes whose sibling views it uses
    /// (each with its rule's source).
    Sql {
        sql: String,
        modes: Vec<(TableName, String)>,
    },
    /// What the write view cannot do as the source would (SQLSTATE 0A000).
    Refused(String),
}

/// Rewrites `stmt` for the tables of `switched`, with their rules from `rules`.
pub fn rewrite(stmt: &Statement, rules: &RuleSet, switched: &HashSet<TableName>) -> Rewritten {
    let mut stmt = stmt.clone();
    let mut modes = Vec::new();
    let mut changed = match insert_target(&mut stmt, rules, switched) {
        Ok(Some(mode)) => {
            modes.extend(mode);
            true
        }
        Ok(None) => false,
        Err(why) => return Rewritten::Refused(why),
    };
    if let Statement::Truncate(t) = &stmt {
        for name in &t.table_names {
            if let Some(table) = resolve(&name.name).filter(|t| switched.contains(t)) {
                return Rewritten::Refused(format!(
                    "TRUNCATE of {table}, whose writes are on the secondary, is not supported"
                ));
            }
        }
    }
    changed |= copy_target(&mut stmt, rules, switched);
    // Every other reference (UPDATE and DELETE targets, reads) becomes the write view.
    let mut r = Retarget::new(|table: &TableName| {
        let rule = rules.get(table).filter(|_| switched.contains(table))?;
        Some(view_object(&view_name(rule)))
    });
    let _ = stmt.visit(&mut r);
    if !changed && r.replaced == 0 {
        return Rewritten::Untouched;
    }
    Rewritten::Sql {
        sql: stmt.to_string(),
        modes,
    }
}

/// The text of a Query or Parse with the statements at `ranges` rewritten; a refused one becomes
/// a statement that fails with SQLSTATE 0A000 and the reason, so that the primary itself
/// aborts the transaction as it would for an error of its own. Also the upsert modes used.
pub fn rewrite_text(
    text: &str,
    ranges: &[Range<usize>],
    rules: &RuleSet,
    switched: &HashSet<TableName>,
) -> (String, Vec<(TableName, String)>) {
    // A prepared statement's refusal takes its parameters, so that its Bind succeeds and its
    // Execute fails with the refusal's own SQLSTATE.
    let params = max_placeholder(text);
    let mut edits = Vec::new();
    let mut modes = Vec::new();
    for r in ranges {
        let Some(part) = text.get(r.clone()) else {
            continue;
        };
        let new = match Parser::parse_sql(&PostgreSqlDialect {}, part) {
            Ok(stmts) if stmts.len() == 1 => match rewrite(&stmts[0], rules, switched) {
                Rewritten::Untouched => continue,
                Rewritten::Sql { sql, modes: m } => {
                    modes.extend(m);
                    sql
                }
                Rewritten::Refused(why) => refusal(&why, params),
            },
            _ => refusal(
                "pgbridge cannot parse this statement on a table whose writes are on the secondary",
                params,
            ),
        };
        edits.push((r.start, r.len(), new));
    }
    (super::splice::apply(text, &mut edits), modes)
}

/// A statement that fails with SQLSTATE 0A000 and `why`. The message goes in hex, so that
/// the text names no table: it is a statement of pgbridge's, not a write pgbridge missed. With
/// `params` parameters (`$1` to `$n`) it is a call of the write views' `refuse` function that
/// takes them (`src/sql/write_view.rs`).
pub fn refusal(why: &str, params: usize) -> String {
    let hex: String = why.bytes().map(|b| format!("{b:02x}")).collect();
    if params == 0 {
        return format!(
            "DO $pgbridge$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', \
             MESSAGE = convert_from(decode('{hex}', 'hex'), 'UTF8'); END$pgbridge$"
        );
    }
    let args: Vec<String> = (1..=params).map(|i| format!("${i}::text")).collect();
    format!(
        "SELECT {}.refuse('{hex}', ARRAY[{}]::text[])",
        super::write_view::SCHEMA,
        args.join(", ")
    )
}

/// The highest parameter number (`$n`) of `text`, 0 when it has none.
fn max_placeholder(text: &str) -> usize {
    super::splice::tokens(text)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| match &t.token {
            sqlparser::tokenizer::Token::Placeholder(p) => p.strip_prefix('$')?.parse().ok(),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

fn view_object(view: &str) -> ObjectName {
    let (schema, name) = view.split_once('.').expect("a qualified view name");
    let ident = |s: &str| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(q) => Ident::with_quote('"', q.replace("\"\"", "\"")),
        None => Ident::new(s),
    };
    ObjectName(vec![
        ObjectNamePart::Identifier(ident(schema)),
        ObjectNamePart::Identifier(ident(name)),
    ])
}

fn last_ident(name: &ObjectName) -> Option<Ident> {
    name.0.last().and_then(|p| p.as_ident()).cloned()
}

fn switched_rule<'r>(
    name: &ObjectName,
    rules: &'r RuleSet,
    switched: &HashSet<TableName>,
) -> Option<&'r Rule> {
    let table = resolve(name)?;
    if !switched.contains(&table) {
        return None;
    }
    rules.get(&table).map(|r| r.as_ref())
}

/// The INSERT's own table: the write view, or the sibling view of its ON CONFLICT.
fn insert_target(
    stmt: &mut Statement,
    rules: &RuleSet,
    switched: &HashSet<TableName>,
) -> Result<Option<Option<(TableName, String)>>, String> {
    let Statement::Insert(insert) = stmt else {
        return Ok(None);
    };
    let TableObject::TableName(name) = &insert.table else {
        return Ok(None);
    };
    let Some(rule) = switched_rule(name, rules, switched) else {
        return Ok(None);
    };
    let mode = match insert.on.take() {
        None => None,
        Some(OnInsert::OnConflict(c)) => Some(conflict_mode(rule, &c.conflict_target, &c.action)?),
        Some(other) => return Err(format!("{other} is not supported on {}", rule.source)),
    };
    if insert.table_alias.is_none() {
        insert.table_alias = last_ident(name).map(|alias| TableAliasWithoutColumns {
            explicit: true,
            alias,
        });
    }
    let view = match &mode {
        Some(m) => mode_view_name(rule, m),
        None => view_name(rule),
    };
    insert.table = TableObject::TableName(view_object(&view));
    Ok(Some(mode.map(|m| (rule.source.clone(), m))))
}

/// The upsert mode of an ON CONFLICT clause on the rule's key.
fn conflict_mode(
    rule: &Rule,
    target: &Option<ConflictTarget>,
    action: &OnConflictAction,
) -> Result<String, String> {
    let on_key = match target {
        None => true,
        Some(ConflictTarget::Columns(cols)) => {
            let named: HashSet<String> = cols.iter().map(fold).collect();
            named == rule.key.iter().cloned().collect()
        }
        Some(ConflictTarget::OnConstraint(_)) => false,
    };
    if !on_key {
        return Err(format!(
            "ON CONFLICT on {} must name its key ({}) once its writes are on the secondary",
            rule.source,
            rule.key.join(", ")
        ));
    }
    let update = match action {
        OnConflictAction::DoNothing => return Ok("nothing".into()),
        OnConflictAction::DoUpdate(u) => u,
    };
    if target.is_none() {
        return Err("ON CONFLICT DO UPDATE requires a conflict target".into());
    }
    if update.selection.is_some() {
        return Err(format!(
            "ON CONFLICT DO UPDATE ... WHERE on {} is not supported once its writes are on the secondary",
            rule.source
        ));
    }
    let mut cols = Vec::new();
    for a in &update.assignments {
        let AssignmentTarget::ColumnName(name) = &a.target else {
            return Err("ON CONFLICT DO UPDATE SET (a, b) = ... is not supported".into());
        };
        let col = last_ident(name).map(|i| fold(&i)).unwrap_or_default();
        if !excluded_column(&a.value, &col) {
            return Err(format!(
                "ON CONFLICT DO UPDATE on {} can only SET a column to EXCLUDED's own value \
                 once its writes are on the secondary (not {} = {})",
                rule.source, col, a.value
            ));
        }
        if !cols.contains(&col) {
            cols.push(col);
        }
    }
    cols.sort();
    Ok(format!("update:{}", cols.join(",")))
}

fn excluded_column(e: &Expr, col: &str) -> bool {
    match e {
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            fold(&parts[0]) == "excluded" && fold(&parts[1]) == col
        }
        Expr::Nested(inner) => excluded_column(inner, col),
        _ => false,
    }
}

/// COPY FROM into a switched table goes into its write view.
fn copy_target(stmt: &mut Statement, rules: &RuleSet, switched: &HashSet<TableName>) -> bool {
    if let Statement::Copy {
        source: CopySource::Table { table_name, .. },
        to: false,
        ..
    } = stmt
    {
        if let Some(rule) = switched_rule(table_name, rules, switched) {
            *table_name = view_object(&view_name(rule));
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::view::tests::dxy_rule;

    fn run(sql: &str) -> Rewritten {
        let rules = RuleSet::new(vec![dxy_rule()]);
        let switched: HashSet<TableName> = [TableName::new("public", "derived_data_bars")].into();
        let stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        rewrite(&stmt, &rules, &switched)
    }

    fn sql(s: &str) -> String {
        match run(s) {
            Rewritten::Sql { sql, .. } => sql,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn writes_and_reads_of_the_table_go_to_its_write_view_under_their_old_name() {
        assert_eq!(
            sql("INSERT INTO derived_data_bars (symbol, ts) VALUES ('DXY', now()) RETURNING derived_data_bars.ts"),
            "INSERT INTO pgbridge_w.derived_data_bars AS derived_data_bars (symbol, ts) VALUES ('DXY', now()) RETURNING derived_data_bars.ts"
        );
        assert_eq!(
            sql("UPDATE public.derived_data_bars b SET close = close + 1 WHERE b.symbol = 'DXY'"),
            "UPDATE pgbridge_w.derived_data_bars b SET close = close + 1 WHERE b.symbol = 'DXY'"
        );
        assert_eq!(
            sql("DELETE FROM derived_data_bars WHERE ts < (SELECT max(ts) FROM derived_data_bars)"),
            "DELETE FROM pgbridge_w.derived_data_bars AS derived_data_bars WHERE ts < (SELECT max(ts) FROM pgbridge_w.derived_data_bars AS derived_data_bars)"
        );
        assert_eq!(
            sql("COPY derived_data_bars (symbol, ts) FROM STDIN"),
            "COPY pgbridge_w.derived_data_bars (symbol, ts) FROM STDIN"
        );
        // As in the read rewrite: a column named through the schema loses it.
        assert_eq!(
            sql("UPDATE public.derived_data_bars SET close = 1 RETURNING public.derived_data_bars.close"),
            "UPDATE pgbridge_w.derived_data_bars AS derived_data_bars SET close = 1 RETURNING derived_data_bars.close"
        );
        assert_eq!(run("SELECT 1 FROM other_table"), Rewritten::Untouched);
        assert_eq!(
            run("INSERT INTO other_table VALUES (1)"),
            Rewritten::Untouched
        );
    }

    #[test]
    fn an_upsert_goes_to_the_sibling_view_of_what_its_clause_asked() {
        let r = run(
            "INSERT INTO derived_data_bars VALUES ('DXY', now(), 1, 1, 1, 1, 1) \
             ON CONFLICT (ts, symbol) DO UPDATE SET volume = excluded.volume, close = EXCLUDED.close",
        );
        let Rewritten::Sql { sql, modes } = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            sql,
            "INSERT INTO pgbridge_w.\"derived_data_bars#update:close,volume\" AS derived_data_bars VALUES ('DXY', now(), 1, 1, 1, 1, 1)"
        );
        assert_eq!(
            modes,
            vec![(
                TableName::new("public", "derived_data_bars"),
                "update:close,volume".into()
            )]
        );
        let r = run("INSERT INTO derived_data_bars VALUES ('DXY', now()) ON CONFLICT DO NOTHING");
        assert!(
            matches!(r, Rewritten::Sql { ref sql, .. } if sql.contains("\"derived_data_bars#nothing\""))
        );
    }

    #[test]
    fn a_text_is_rewritten_statement_by_statement_and_a_refused_one_fails_on_the_primary() {
        let rules = RuleSet::new(vec![dxy_rule()]);
        let switched: HashSet<TableName> = [TableName::new("public", "derived_data_bars")].into();
        let text = "SELECT 1; DELETE FROM derived_data_bars; TRUNCATE derived_data_bars";
        let at = |part: &str| {
            let start = text.find(part).unwrap();
            start..start + part.len()
        };
        let ranges = [
            at("DELETE FROM derived_data_bars"),
            at("TRUNCATE derived_data_bars"),
        ];
        let (sql, modes) = rewrite_text(text, &ranges, &rules, &switched);
        assert!(modes.is_empty());
        assert!(sql.starts_with("SELECT 1; DELETE FROM pgbridge_w.derived_data_bars AS derived_data_bars; DO $pgbridge$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000'"), "{sql}");
        let text = "TRUNCATE derived_data_bars; SELECT $2";
        let truncate = 0.."TRUNCATE derived_data_bars".len();
        let (sql, _) = rewrite_text(text, std::slice::from_ref(&truncate), &rules, &switched);
        assert!(sql.starts_with("SELECT pgbridge_w.refuse('"), "{sql}");
        assert!(sql.contains("ARRAY[$1::text, $2::text]::text[])"), "{sql}");
    }

    #[test]
    fn what_the_view_cannot_do_as_the_table_would_is_refused() {
        for s in [
            "INSERT INTO derived_data_bars VALUES ('DXY') ON CONFLICT (ts) DO NOTHING",
            "INSERT INTO derived_data_bars VALUES ('DXY') ON CONFLICT ON CONSTRAINT k DO NOTHING",
            "INSERT INTO derived_data_bars VALUES ('DXY') ON CONFLICT (symbol, ts) DO UPDATE SET close = 1",
            "INSERT INTO derived_data_bars VALUES ('DXY') ON CONFLICT (symbol, ts) DO UPDATE SET close = EXCLUDED.close WHERE false",
            "TRUNCATE derived_data_bars",
        ] {
            assert!(matches!(run(s), Rewritten::Refused(_)), "{s}");
        }
    }
}
