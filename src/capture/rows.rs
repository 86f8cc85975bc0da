//! A captured result row turned into a row-level change.
//!
//! The capture rewrite appends, after the client's own columns: the row image (every source
//! column; the key alone for DELETE), the rule's `where` evaluated on the row when the rule has
//! one, the old key when an UPDATE changes key columns, and the transaction id ([`Capture`]).

use bytes::Bytes;

use crate::mirror::{Change, ChangeOp, Effect, Row, Value};
use crate::protocol::wire::FieldInfo;
use crate::sql::{Capture, WriteOp};

/// The change one DataRow of a captured statement stands for; `None` when the row is malformed.
pub fn change(capture: &Capture, fields: &[FieldInfo], values: &[Option<&[u8]>]) -> Option<Change> {
    if fields.len() != values.len() || values.len() < capture.extra {
        return None;
    }
    let mut columns = Columns {
        fields,
        values,
        at: values.len() - capture.extra,
    };
    let row = columns.row(&capture.columns);
    let in_filter = capture.in_filter.then(|| columns.next_boolean());
    let old_key = columns.row(&capture.old_key);
    Some(Change {
        table: capture.table.clone(),
        op: op(capture, row, old_key, in_filter),
    })
}

/// What the captured row says happened: the row image as a delete, an update of its key, or
/// an upsert with the statement's effect.
fn op(capture: &Capture, row: Row, old_key: Row, in_filter: Option<bool>) -> ChangeOp {
    match capture.op {
        WriteOp::Delete => ChangeOp::Delete {
            key: row,
            in_filter,
        },
        WriteOp::Update if !capture.old_key.is_empty() => ChangeOp::UpdateKey {
            old_key,
            row,
            in_filter,
        },
        op => ChangeOp::Upsert {
            row,
            in_filter,
            effect: match op {
                WriteOp::Insert | WriteOp::InsertSelect => Some(Effect::Inserted),
                WriteOp::Update => Some(Effect::Updated),
                // ON CONFLICT: inserted or updated, the primary does not say which.
                _ => None,
            },
        },
    }
}

/// The capture's columns of one DataRow, read in order from `at`.
struct Columns<'a> {
    fields: &'a [FieldInfo],
    values: &'a [Option<&'a [u8]>],
    at: usize,
}

impl Columns<'_> {
    /// The next `names.len()` columns as a row of those names.
    fn row(&mut self, names: &[String]) -> Row {
        let mut row = Row::with_capacity(names.len());
        for name in names {
            row = row.with(name, self.value(self.at));
            self.at += 1;
        }
        row
    }

    fn next_boolean(&mut self) -> bool {
        let v = boolean(self.fields[self.at], self.values[self.at]);
        self.at += 1;
        v
    }

    fn value(&self, i: usize) -> Value {
        Value {
            type_oid: self.fields[i].type_oid,
            format: self.fields[i].format as u8,
            bytes: self.values[i].map(Bytes::copy_from_slice),
        }
    }
}

/// The transaction id a captured DataRow carries last (an xid8, text or binary); `None` when
/// the value does not read as one.
pub fn xid(fields: &[FieldInfo], values: &[Option<&[u8]>]) -> Option<i64> {
    if fields.len() != values.len() {
        return None;
    }
    let (field, value) = (fields.last()?, (*values.last()?)?);
    match field.format {
        1 => Some(i64::from_be_bytes(value.try_into().ok()?)),
        _ => std::str::from_utf8(value).ok()?.parse().ok(),
    }
}

/// The WAL position a captured DataRow carries before its transaction id (a pg_lsn, text
/// `X/Y` in hexadecimal or binary); `None` when the value does not read as one.
pub fn lsn(fields: &[FieldInfo], values: &[Option<&[u8]>]) -> Option<u64> {
    if fields.len() != values.len() || fields.len() < 2 {
        return None;
    }
    let at = fields.len() - 2;
    let value = values[at]?;
    match fields[at].format {
        1 => Some(u64::from_be_bytes(value.try_into().ok()?)),
        _ => parse_lsn(std::str::from_utf8(value).ok()?),
    }
}

/// A pg_lsn's text, `16/B374D848`: the high and low 32 bits in hexadecimal.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((hi as u64) << 32 | lo as u64)
}

/// A boolean in text (`t`/`f`) or binary (one byte) format; NULL is false, as in a WHERE.
fn boolean(field: FieldInfo, value: Option<&[u8]>) -> bool {
    match (field.format, value) {
        (_, None) => false,
        (1, Some(v)) => v.first() == Some(&1),
        (_, Some(v)) => v == b"t",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::TableName;

    fn capture(op: WriteOp, old_key: &[&str]) -> Capture {
        Capture {
            table: TableName::new("public", "bars"),
            op,
            client_returning: true,
            columns: vec!["symbol".into(), "ts".into()],
            in_filter: true,
            old_key: old_key.iter().map(|s| s.to_string()).collect(),
            extra: 4 + old_key.len(),
        }
    }

    fn text(n: usize) -> Vec<FieldInfo> {
        vec![
            FieldInfo {
                type_oid: 25,
                format: 0
            };
            n
        ]
    }

    #[test]
    fn the_trailing_columns_make_the_change() {
        let c = capture(WriteOp::Insert, &[]);
        let values = [
            Some(&b"client"[..]),
            Some(b"DXY"),
            Some(b"2026"),
            Some(b"t"),
            Some(b"7654321"),
        ];
        let change = change(&c, &text(5), &values).unwrap();
        assert_eq!(xid(&text(5), &values), Some(7654321));
        let ChangeOp::Upsert {
            row,
            in_filter,
            effect,
        } = change.op
        else {
            panic!("{change:?}")
        };
        assert_eq!(in_filter, Some(true));
        assert_eq!(effect, Some(Effect::Inserted));
        assert_eq!(row.columns, vec!["symbol", "ts"]);
        assert_eq!(
            row.get("symbol").unwrap().bytes.as_deref(),
            Some(&b"DXY"[..])
        );
    }

    #[test]
    fn a_key_change_carries_the_old_key() {
        let c = capture(WriteOp::Update, &["symbol"]);
        let values = [
            Some(&b"DXY"[..]),
            Some(b"2026"),
            Some(b"f"),
            Some(b"OLD"),
            Some(b"12"),
        ];
        let change = change(&c, &text(5), &values).unwrap();
        let ChangeOp::UpdateKey {
            old_key, in_filter, ..
        } = change.op
        else {
            panic!("{change:?}")
        };
        assert_eq!(in_filter, Some(false));
        assert_eq!(
            old_key.get("symbol").unwrap().bytes.as_deref(),
            Some(&b"OLD"[..])
        );
        assert!(super::change(&c, &text(4), &values[..4]).is_none());
    }

    #[test]
    fn the_wal_position_before_the_xid_is_read_in_either_format() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nope"), None);
        let fields = text(3);
        let values = [Some(&b"a"[..]), Some(&b"1/2A"[..]), Some(&b"77"[..])];
        assert_eq!(lsn(&fields, &values), Some((1 << 32) | 0x2A));
        let mut fields = text(3);
        fields[1].format = 1;
        let bytes = 0x0102_0304_0506_0708u64.to_be_bytes();
        let values = [Some(&b"a"[..]), Some(&bytes[..]), Some(&b"77"[..])];
        assert_eq!(lsn(&fields, &values), Some(0x0102_0304_0506_0708));
        assert_eq!(lsn(&fields[..1], &values[..1]), None);
    }

    #[test]
    fn a_binary_xid_is_read_too() {
        let id = 9_000_000_123_i64.to_be_bytes();
        let values = [Some(&b"DXY"[..]), Some(b"2026"), Some(b"t"), Some(&id[..])];
        let mut fields = text(4);
        fields[3].format = 1;
        assert_eq!(xid(&fields, &values), Some(9_000_000_123));
        let values = [Some(&b"DXY"[..]), Some(b"2026"), Some(b"t"), None];
        assert_eq!(xid(&fields, &values), None);
    }
}
