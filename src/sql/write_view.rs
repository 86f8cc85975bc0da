//! The write view: the target table presented as the source, writable.
//!
//! Once a table's writes are switched to the secondary, the application's statements on the
//! source are executed against `pgbridge_w.<source>` in the target's database: a view with
//! the source's exact columns and types (the read view of [`super::view::read_view`]) and one
//! INSTEAD OF trigger that carries each row over to the target through the rule: columns
//! renamed, values translated, the `values` columns set, and the rule's `where` kept. When the
//! source table is in the same database, its rows outside the `where` stay in it, part of the
//! view and written there (`src/sql/write_rest.rs`); otherwise a row outside the `where` is
//! refused with SQLSTATE 44000, as a view's `WITH CHECK OPTION` refuses one.
//! PostgreSQL then does the rest as it would for the source: RETURNING in the source's names
//! and types, command tags counting the rows the trigger wrote, COPY FROM, savepoints, errors.
//!
//! A view has no unique index, so `INSERT ... ON CONFLICT` cannot name one on it: the proxy
//! takes the clause off the statement and sends the INSERT to a sibling view of the same rows
//! whose trigger is given what the clause asked for ([`mode_view_name`]): `nothing`, or
//! `update:` and the source columns the client's `DO UPDATE SET c = EXCLUDED.c` assigns. That
//! trigger upserts on the target's key (the mapped key plus the `values` columns); the plain
//! view's INSERT lets a duplicate key fail on the target's key (23505).
//!
//! After each INSERT or UPDATE the trigger reads the row back from the target by its key, so
//! RETURNING shows what the target stored (its defaults and its own triggers included).
//!
//! Privileges: the views get the legacy table's grants (`src/writes/install.rs`), and the
//! trigger runs as its owner, pgbridge (`SECURITY DEFINER`, with a fixed `search_path`): an
//! application may write through the view what it could write in the legacy table, and needs
//! no privilege on the target.

use crate::rules::{quote_ident, quote_literal, Column, Rule};

use super::view::{read_view, source_value, target_value, values_condition};
use super::write_rest::rest_body;

/// The schema of the write views.
pub const SCHEMA: &str = "pgbridge_w";

/// The write view of `rule`, schema-qualified and quoted: `pgbridge_w."derived_data_bars"`
/// (a source outside `public` keeps its schema in the name: `"legacy.bars"`).
pub fn view_name(rule: &Rule) -> String {
    format!("{SCHEMA}.{}", quote_ident(&bare_name(rule)))
}

fn bare_name(rule: &Rule) -> String {
    if rule.source.schema == "public" {
        rule.source.name.clone()
    } else {
        format!("{}.{}", rule.source.schema, rule.source.name)
    }
}

/// The refusal of a prepared statement the write views cannot run as the legacy table would
/// (`src/sql/write_rewrite.rs`): it takes the statement's parameters and fails with 0A000 and
/// the message (in hex).
const REFUSE: &str = "CREATE OR REPLACE FUNCTION pgbridge_w.refuse(message text, params text[]) \
    RETURNS void LANGUAGE plpgsql AS $pgbridge$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', \
    MESSAGE = convert_from(decode(message, 'hex'), 'UTF8'); END$pgbridge$;\n";

/// The sibling write view whose INSERT is an upsert as `mode` says (`nothing`, or `update:`
/// and the comma-separated source columns to assign).
pub fn mode_view_name(rule: &Rule, mode: &str) -> String {
    format!(
        "{SCHEMA}.{}",
        quote_ident(&format!("{}#{mode}", bare_name(rule)))
    )
}

fn function_name(rule: &Rule) -> String {
    format!(
        "{SCHEMA}.{}",
        quote_ident(&format!("{}_write", bare_name(rule)))
    )
}

/// The script that creates (or replaces) the sibling view for `mode`, once the write view's
/// function exists (`rest` as for [`install_script`]).
pub fn mode_view_script(rule: &Rule, mode: &str, rest: bool) -> Option<String> {
    let view = mode_view_name(rule, mode);
    let rest = rest && rule.filter.is_some();
    Some(format!(
        "CREATE OR REPLACE VIEW {view} AS {};\n{}",
        view_sql(rule, rest)?,
        trigger(rule, &view, mode)
    ))
}

/// The view's query: the rule's rows from the target, and with `rest` the source's own rows
/// outside the rule's `where`.
fn view_sql(rule: &Rule, rest: bool) -> Option<String> {
    let read = read_view(rule)?;
    if !rest {
        return Some(read);
    }
    let columns = rule.source_columns.as_ref()?;
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    Some(format!(
        "{read} UNION ALL SELECT {} FROM {} WHERE NOT coalesce(({}), false)",
        names.join(", "),
        rule.source.quoted(),
        rule.filter.as_deref().unwrap_or("false")
    ))
}

fn trigger(rule: &Rule, view: &str, mode: &str) -> String {
    format!(
        "DROP TRIGGER IF EXISTS pgbridge_write ON {view};\n\
         CREATE TRIGGER pgbridge_write INSTEAD OF INSERT OR UPDATE OR DELETE ON {view} \
         FOR EACH ROW EXECUTE FUNCTION {}({});\n",
        function_name(rule),
        quote_literal(mode)
    )
}

/// The script that creates (or replaces) the write view of `rule` and its trigger; `None`
/// while the rule's columns are unknown (rules checked offline). `defaults`: target columns'
/// default expressions, given to the view's columns they are stored in. `rest`: the source
/// table is in the same database, and its rows outside the rule's `where` stay in it, part of
/// the view and written there ([`rest_view`]).
pub fn install_script(rule: &Rule, defaults: &[(String, String)], rest: bool) -> Option<String> {
    let columns = rule.source_columns.as_ref()?;
    let view = view_name(rule);
    let function = function_name(rule);
    let rest = rest && rule.filter.is_some();
    let mut sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {SCHEMA};\n{REFUSE}\
         CREATE OR REPLACE VIEW {view} AS {};\n",
        view_sql(rule, rest)?
    );
    for c in columns {
        let target = rule.target_column(&c.name);
        if rule.translation(&c.name).is_some() {
            continue;
        }
        if let Some((_, expr)) = defaults.iter().find(|(t, _)| t == target) {
            sql.push_str(&format!(
                "ALTER VIEW {view} ALTER COLUMN {} SET DEFAULT {expr};\n",
                quote_ident(&c.name)
            ));
        }
    }
    sql.push_str(&format!(
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql \
         SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $pgbridge$\n\
         #variable_conflict use_column\n\
         DECLARE\n  pgbridge_n bigint;\n  pgbridge_mode text := coalesce(TG_ARGV[0], '');\n\
         \x20 pgbridge_old_in boolean;\n  pgbridge_new_in boolean;\n\
         BEGIN\n{}\nEND\n$pgbridge$;\n",
        match rest {
            true => rest_body(rule, columns),
            false => body(rule, columns),
        }
    ));
    sql.push_str(&trigger(rule, &view, ""));
    Some(sql)
}

/// The script that drops the write views of `rule` (the sibling views go with the function).
pub fn drop_script(rule: &Rule) -> String {
    format!(
        "DROP VIEW IF EXISTS {};\nDROP FUNCTION IF EXISTS {}() CASCADE;\n",
        view_name(rule),
        function_name(rule)
    )
}

/// The trigger's body: check the `where`, then INSERT (plain, or an upsert as the trigger's
/// mode says), UPDATE or DELETE the target row, and return the row.
fn body(rule: &Rule, columns: &[Column]) -> String {
    let target = rule.target.quoted();
    format!(
        "{check}\
         IF TG_OP = 'DELETE' THEN\n  DELETE FROM {target} AS t WHERE {old};\n  \
         GET DIAGNOSTICS pgbridge_n = ROW_COUNT;\n  IF pgbridge_n = 0 THEN RETURN NULL; END IF;\n  RETURN OLD;\n\
         ELSIF TG_OP = 'UPDATE' THEN\n  UPDATE {target} AS t SET {assign} WHERE {old};\n  \
         GET DIAGNOSTICS pgbridge_n = ROW_COUNT;\n  IF pgbridge_n = 0 THEN RETURN NULL; END IF;\n\
         ELSE\n{insert}\
         END IF;\n  {reread}\n  RETURN NEW;",
        check = where_check(rule),
        old = target_by_key(rule, "OLD"),
        assign = target_assign(rule, columns),
        insert = insert(rule, columns),
        reread = target_reread(rule, columns),
    )
}

/// The target row of record `rec` (`NEW` or `OLD`): its mapped key among the rule's rows.
pub(super) fn target_by_key(rule: &Rule, rec: &str) -> String {
    let conds: Vec<String> = rule
        .key
        .iter()
        .map(|k| {
            let value = target_value(rule, k, &format!("{rec}.{}", quote_ident(k)));
            format!("t.{} = {value}", quote_ident(rule.target_column(k)))
        })
        .collect();
    let owned = values_condition(rule, "t.")
        .map(|c| format!(" AND {c}"))
        .unwrap_or_default();
    format!("{}{owned}", conds.join(" AND "))
}

/// The SET list that stores `NEW` in the target row.
pub(super) fn target_assign(rule: &Rule, columns: &[Column]) -> String {
    let assign: Vec<String> = columns
        .iter()
        .map(|c| {
            let value = target_value(rule, &c.name, &format!("NEW.{}", quote_ident(&c.name)));
            format!("{} = {value}", quote_ident(rule.target_column(&c.name)))
        })
        .collect();
    assign.join(", ")
}

/// Reads `NEW` back from the target row it was stored in.
pub(super) fn target_reread(rule: &Rule, columns: &[Column]) -> String {
    format!(
        "SELECT {} INTO {} FROM {} AS t WHERE {};",
        columns
            .iter()
            .map(|c| source_value(rule, c, "t."))
            .collect::<Vec<_>>()
            .join(", "),
        new_fields(columns),
        rule.target.quoted(),
        target_by_key(rule, "NEW")
    )
}

/// `NEW.a, NEW.b, ...`: every source column of the record.
pub(super) fn new_fields(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| format!("NEW.{}", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses a new row outside the rule's `where` (SQLSTATE 44000).
fn where_check(rule: &Rule) -> String {
    let Some(filter) = &rule.filter else {
        return String::new();
    };
    let message = format!(
        "new row for relation \"{}\" is outside the rows migrated to {} (where {filter})",
        rule.source.name, rule.target
    );
    format!(
        "IF TG_OP <> 'DELETE' AND NOT EXISTS (SELECT 1 FROM (SELECT NEW.*) AS pgbridge_row WHERE ({filter})) THEN\n  \
         RAISE EXCEPTION USING ERRCODE = '44000', MESSAGE = {};\nEND IF;\n",
        quote_literal(&message)
    )
}

/// The INSERT branch: the row mapped to the target, plain or upserted on the target's key.
pub(super) fn insert(rule: &Rule, columns: &[Column]) -> String {
    let (names, values) = mapped_row(rule, columns);
    let key = rule
        .conflict_key
        .clone()
        .unwrap_or_else(|| rule.target_key());
    let assigned: Vec<(String, String)> = columns
        .iter()
        .filter(|c| !rule.key.contains(&c.name))
        .map(|c| (c.name.clone(), rule.target_column(&c.name).to_string()))
        .collect();
    upsert(&rule.target.quoted(), &names, &values, &key, &assigned)
}

/// The target's columns and the values `NEW` gives them: mapped, and the `values` set.
pub(super) fn mapped_row(rule: &Rule, columns: &[Column]) -> (Vec<String>, Vec<String>) {
    let mut names: Vec<String> = Vec::new();
    let mut values: Vec<String> = Vec::new();
    for c in columns {
        names.push(quote_ident(rule.target_column(&c.name)));
        values.push(target_value(
            rule,
            &c.name,
            &format!("NEW.{}", quote_ident(&c.name)),
        ));
    }
    for (c, v) in &rule.values {
        names.push(quote_ident(c));
        values.push(v.clone());
    }
    (names, values)
}

/// `INSERT INTO table AS t (names) VALUES (values)`, plain, or on conflict on `key` doing
/// nothing (the row then not counted) or assigning the `(source column, column)` pairs the
/// client's `DO UPDATE SET` named (`pgbridge_mode`).
pub(super) fn upsert(
    table: &str,
    names: &[String],
    values: &[String],
    key: &[String],
    assigned: &[(String, String)],
) -> String {
    let head = format!(
        "INSERT INTO {table} AS t ({}) VALUES ({})",
        names.join(", "),
        values.join(", ")
    );
    let key: Vec<String> = key.iter().map(|c| quote_ident(c)).collect();
    let updates: Vec<String> = assigned
        .iter()
        .map(|(source, column)| {
            let t = quote_ident(column);
            format!(
                "{t} = CASE WHEN {} = ANY (pgbridge_cols) THEN EXCLUDED.{t} ELSE t.{t} END",
                quote_literal(source)
            )
        })
        .collect();
    let on_update = if updates.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    format!(
        "  IF pgbridge_mode = '' THEN\n    {head};\n  \
         ELSIF pgbridge_mode = 'nothing' THEN\n    {head} ON CONFLICT ({key}) DO NOTHING;\n    \
         GET DIAGNOSTICS pgbridge_n = ROW_COUNT;\n    IF pgbridge_n = 0 THEN RETURN NULL; END IF;\n  \
         ELSE\n    DECLARE pgbridge_cols text[] := string_to_array(substr(pgbridge_mode, 8), ',');\n    \
         BEGIN\n      {head} ON CONFLICT ({key}) {on_update};\n    END;\n  END IF;\n",
        key = key.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::view::tests::dxy_rule;

    #[test]
    fn the_view_is_named_after_the_source_and_keeps_its_schema_outside_public() {
        let mut rule = dxy_rule();
        assert_eq!(view_name(&rule), "pgbridge_w.derived_data_bars");
        rule.source = crate::rules::TableName::new("legacy", "Bars");
        assert_eq!(view_name(&rule), "pgbridge_w.\"legacy.Bars\"");
    }

    #[test]
    fn the_trigger_maps_every_column_sets_the_values_and_keeps_the_where() {
        let rule = dxy_rule();
        let sql = install_script(&rule, &[("volume".into(), "0".into())], false).unwrap();
        // The view is the read view, with the target's default for a column stored as is.
        assert!(sql.contains("CREATE OR REPLACE VIEW pgbridge_w.derived_data_bars AS SELECT"));
        assert!(sql.contains("ALTER COLUMN volume SET DEFAULT 0"));
        // Inserted: renamed, translated, constants set.
        assert!(sql.contains(
            "INSERT INTO public.data_bars AS t (symbol, ts, open, high, low, close_px, volume, timeframe, is_synthetic) \
             VALUES (CASE NEW.symbol WHEN 'DXY' THEN 'DXY.IDX' ELSE NEW.symbol END, NEW.ts"
        ));
        assert!(sql.contains("'1m', true)"));
        // An upsert on the target's key assigns only what the client's SET named.
        assert!(sql.contains("ON CONFLICT (symbol, timeframe, ts) DO UPDATE SET"));
        assert!(sql
            .contains("close_px = CASE WHEN 'close' = ANY (pgbridge_cols) THEN EXCLUDED.close_px"));
        // Rows are found by the mapped key among the rule's own target rows.
        assert!(sql.contains(
            "WHERE t.symbol = CASE OLD.symbol WHEN 'DXY' THEN 'DXY.IDX' ELSE OLD.symbol END AND t.ts = OLD.ts \
             AND t.timeframe = '1m' AND t.is_synthetic = true"
        ));
        assert!(sql.contains("ERRCODE = '44000'"));
        assert!(sql.contains("WHERE (symbol = 'DXY')"));
    }

    #[test]
    fn with_the_source_beside_it_the_rest_of_the_table_stays_there() {
        let rule = dxy_rule();
        let sql = install_script(&rule, &[], true).unwrap();
        assert!(sql.contains(
            "UNION ALL SELECT symbol, ts, open, high, low, close, volume FROM public.derived_data_bars \
             WHERE NOT coalesce((symbol = 'DXY'), false)"
        ));
        // No refusal of a row outside the where: it goes to the legacy table.
        assert!(!sql.contains("44000"));
        assert!(sql.contains("INSERT INTO public.derived_data_bars AS t (symbol, ts, open, high, low, close, volume) VALUES (NEW.symbol"));
        assert!(sql.contains("ELSIF pgbridge_old_in THEN\n    DELETE FROM public.data_bars"));
        let sibling = mode_view_script(&rule, "nothing", true).unwrap();
        assert!(sibling.contains("UNION ALL") && sibling.contains("('nothing')"));
    }

    #[test]
    fn an_unchecked_rule_has_no_view() {
        let mut rule = dxy_rule();
        rule.source_columns = None;
        assert!(install_script(&rule, &[], false).is_none());
    }
}
