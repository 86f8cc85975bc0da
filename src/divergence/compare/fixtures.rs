//! Small results for the tests of the comparison: text-format result sets, the DXY bars keyed
//! on (symbol, ts), and two-column integer tables for the properties.

use bytes::Bytes;

use super::value::{INT8, NUMERIC, TEXT, TIMESTAMPTZ};
use super::{CompareOptions, Field, ResultSet};

pub(super) fn text(v: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(v.as_bytes()))
}

pub(super) fn rs(fields: &[(&str, u32)], rows: &[&[Option<&str>]]) -> ResultSet {
    ResultSet {
        fields: fields.iter().map(|(n, o)| Field::new(n, *o, 0)).collect(),
        rows: rows
            .iter()
            .map(|r| r.iter().map(|v| v.and_then(text)).collect())
            .collect(),
    }
}

pub(super) fn bars(rows: &[&[Option<&str>]]) -> ResultSet {
    rs(
        &[("symbol", TEXT), ("ts", TIMESTAMPTZ), ("close", NUMERIC)],
        rows,
    )
}

pub(super) fn keyed(redact: bool) -> CompareOptions {
    CompareOptions {
        key: vec!["symbol".into(), "ts".into()],
        redact,
        ..Default::default()
    }
}

pub(super) const T1: &str = "2026-01-05 14:30:00+00";
pub(super) const T2: &str = "2026-01-05 14:31:00+00";

pub(super) fn table(rows: &[(i64, i64)]) -> ResultSet {
    ResultSet {
        fields: vec![Field::new("k", INT8, 0), Field::new("v", INT8, 0)],
        rows: rows
            .iter()
            .map(|(k, v)| vec![text(&k.to_string()), text(&v.to_string())])
            .collect(),
    }
}
