//! The write view's trigger when the source table is in the target's database and its rule has
//! a `where` (`src/sql/write_view.rs`): the rows outside the `where` stay in the legacy table,
//! part of the view (its second branch) and written there, so that the table's statements see
//! and change all of its rows, the migrated ones in the target and the others where they were.
//!
//! Each row goes by its values: inside the `where` to the target (mapped, as without the rest),
//! outside it to the legacy table as it is. An UPDATE that moves a row across the `where`
//! deletes it on one side and inserts it on the other. The legacy table's copies of the
//! migrated rows are the reverse mirror's to keep; the view's second branch leaves them out.

use crate::rules::{quote_ident, Column, Rule};

use super::write_view::{
    insert, mapped_row, new_fields, target_assign, target_by_key, target_reread, upsert,
};

/// The trigger's body with the rest of the table kept in the legacy table.
pub(super) fn rest_body(rule: &Rule, columns: &[Column]) -> String {
    let target = rule.target.quoted();
    let source = rule.source.quoted();
    let filter = rule.filter.as_deref().unwrap_or("true");
    let inside = |rec: &str| {
        format!("EXISTS (SELECT 1 FROM (SELECT {rec}.*) AS pgbridge_row WHERE ({filter}))")
    };
    let rest_by_key = |rec: &str| {
        rule.key
            .iter()
            .map(|k| format!("t.{k} = {rec}.{k}", k = quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let rest_assign: Vec<String> = columns
        .iter()
        .map(|c| format!("{n} = NEW.{n}", n = quote_ident(&c.name)))
        .collect();
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<String> = columns
        .iter()
        .map(|c| format!("NEW.{}", quote_ident(&c.name)))
        .collect();
    let plain_rest = format!(
        "INSERT INTO {source} ({}) VALUES ({});",
        names.join(", "),
        values.join(", ")
    );
    let plain_target = mapped_insert(rule, columns);
    let assigned: Vec<(String, String)> = columns
        .iter()
        .filter(|c| !rule.key.contains(&c.name))
        .map(|c| (c.name.clone(), c.name.clone()))
        .collect();
    let rest_insert = upsert(&source, &names, &values, &rule.key, &assigned);
    let reread_rest = format!(
        "SELECT {} INTO {} FROM {source} AS t WHERE {};",
        names
            .iter()
            .map(|n| format!("t.{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        new_fields(columns),
        rest_by_key("NEW")
    );
    format!(
        "pgbridge_old_in := TG_OP <> 'INSERT' AND {old_in};\n\
         pgbridge_new_in := TG_OP <> 'DELETE' AND {new_in};\n\
         IF TG_OP = 'DELETE' THEN\n\
         \x20 IF pgbridge_old_in THEN DELETE FROM {target} AS t WHERE {t_old};\n\
         \x20 ELSE DELETE FROM {source} AS t WHERE {r_old}; END IF;\n\
         \x20 GET DIAGNOSTICS pgbridge_n = ROW_COUNT;\n  IF pgbridge_n = 0 THEN RETURN NULL; END IF;\n  RETURN OLD;\n\
         ELSIF TG_OP = 'UPDATE' THEN\n\
         \x20 IF pgbridge_old_in AND pgbridge_new_in THEN\n    UPDATE {target} AS t SET {t_assign} WHERE {t_old};\n\
         \x20 ELSIF NOT pgbridge_old_in AND NOT pgbridge_new_in THEN\n    UPDATE {source} AS t SET {r_assign} WHERE {r_old};\n\
         \x20 ELSIF pgbridge_old_in THEN\n    DELETE FROM {target} AS t WHERE {t_old};\n    {plain_rest}\n\
         \x20 ELSE\n    DELETE FROM {source} AS t WHERE {r_old};\n    {plain_target}\n  END IF;\n\
         \x20 GET DIAGNOSTICS pgbridge_n = ROW_COUNT;\n  IF pgbridge_n = 0 THEN RETURN NULL; END IF;\n\
         ELSIF pgbridge_new_in THEN\n{t_insert}\
         ELSE\n{rest_insert}\
         END IF;\n\
         IF pgbridge_new_in THEN\n  {t_reread}\nELSE\n  {reread_rest}\nEND IF;\n  RETURN NEW;",
        old_in = inside("OLD"),
        new_in = inside("NEW"),
        t_old = target_by_key(rule, "OLD"),
        r_old = rest_by_key("OLD"),
        t_assign = target_assign(rule, columns),
        r_assign = rest_assign.join(", "),
        t_insert = insert(rule, columns),
        t_reread = target_reread(rule, columns),
    )
}

/// The plain INSERT of `NEW` mapped into the target (a row moving into the `where`).
fn mapped_insert(rule: &Rule, columns: &[Column]) -> String {
    let (names, values) = mapped_row(rule, columns);
    format!(
        "INSERT INTO {} ({}) VALUES ({});",
        rule.target.quoted(),
        names.join(", "),
        values.join(", ")
    )
}
