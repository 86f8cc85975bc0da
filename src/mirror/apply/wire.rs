//! Values on the wire to the secondary: bound as the primary sent them (its bytes, its format),
//! declared with their type where every server agrees on it; and the secondary's errors sorted
//! into transient (retry) and permanent (park).

use std::error::Error as StdError;

use bytes::BytesMut;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};

use super::{ApplyError, Refusal};
use crate::mirror::{Row, Value};
use crate::rules::TableName;

/// Below this OID a type is built in, with the same OID on every server.
const FIRST_NORMAL_OID: u32 = 16384;
/// SQLSTATE classes of errors that retrying cannot cure: data (22), integrity (23), syntax or
/// access (42), dependent privileges (2B), SQL routine (2F), check option (44), PL/pgSQL (P0),
/// unsupported feature (0A), internal (XX).
const PERMANENT_CLASSES: [&str; 9] = ["22", "23", "42", "2B", "2F", "44", "P0", "0A", "XX"];

/// The parameter type a value is declared with: its own OID when built in (the same on every
/// server), else text (a text value is parsed by the SQL's cast; a binary enum is its label).
pub(super) fn param_oid(v: &Value) -> u32 {
    if v.type_oid != 0 && v.type_oid < FIRST_NORMAL_OID && Type::from_oid(v.type_oid).is_some() {
        v.type_oid
    } else {
        Type::TEXT.oid()
    }
}

pub(super) fn params<'a>(values: &'a [&'a Value]) -> Vec<&'a (dyn ToSql + Sync)> {
    values.iter().map(|v| *v as &(dyn ToSql + Sync)).collect()
}

impl ToSql for Value {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.bytes {
            None => Ok(IsNull::Yes),
            Some(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        if self.format == 1 {
            Format::Binary
        } else {
            Format::Text
        }
    }

    to_sql_checked!();
}

/// Transient (retry) or permanent (park) by SQLSTATE; no SQLSTATE is a connection problem.
pub(super) fn classify(
    e: &tokio_postgres::Error,
    txn: usize,
    table: Option<&TableName>,
    key: Option<&Row>,
) -> ApplyError {
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match e.source() {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    };
    let Some(code) = e.code() else {
        return ApplyError::Transient {
            message,
            reconnect: true,
        };
    };
    let c = code.code();
    if is_permanent(c) {
        return ApplyError::Permanent(Box::new(Refusal {
            txn,
            table: table.cloned(),
            key: key.cloned(),
            sqlstate: Some(c.to_string()),
            message,
        }));
    }
    let reconnect = e.is_closed()
        || c.starts_with("08")
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW;
    ApplyError::Transient { message, reconnect }
}

fn is_permanent(sqlstate: &str) -> bool {
    PERMANENT_CLASSES
        .iter()
        .any(|class| sqlstate.starts_with(class))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_types_are_declared_as_text() {
        assert_eq!(param_oid(&Value::text(1700, "1.5")), 1700);
        assert_eq!(param_oid(&Value::text(99999, "x")), 25);
        assert_eq!(param_oid(&Value::null(0)), 25);
    }

    #[test]
    fn data_and_integrity_errors_are_permanent_others_transient() {
        for code in ["23505", "22P02", "42P01", "0A000", "XX000"] {
            assert!(is_permanent(code), "{code}");
        }
        for code in ["40001", "40P01", "53300", "57P01", "08006"] {
            assert!(!is_permanent(code), "{code}");
        }
    }

    #[test]
    fn values_go_out_as_the_primary_sent_them() {
        let mut out = BytesMut::new();
        let v = Value::binary(17, vec![1, 2, 3]);
        assert!(matches!(v.to_sql(&Type::BYTEA, &mut out), Ok(IsNull::No)));
        assert_eq!(&out[..], &[1, 2, 3]);
        assert!(matches!(v.encode_format(&Type::BYTEA), Format::Binary));
        assert!(matches!(
            Value::text(25, "x").encode_format(&Type::TEXT),
            Format::Text
        ));
        assert!(matches!(
            Value::null(25).to_sql(&Type::TEXT, &mut out),
            Ok(IsNull::Yes)
        ));
    }
}
