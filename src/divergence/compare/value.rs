//! One value decoded into what it means ([`Canon`]), from its text or binary format, so values
//! compare by meaning rather than by bytes: a text `t` equals a binary `0x01`, floats are equal
//! within a tolerance. NUMERIC lives in `numeric`, dates and timestamps in `datetime`; types not
//! decoded here stay [`Canon::Opaque`].

use std::cmp::Ordering;

use bytes::Bytes;
use rust_decimal::Decimal;
use serde_json::{json, Value as Json};

use super::datetime::{date_text, date_value, parse_timestamp, timestamp_text};
use super::numeric::{numeric_binary_to_text, numeric_text};

pub(super) const BOOL: u32 = 16;
pub(super) const BYTEA: u32 = 17;
pub(super) const NAME: u32 = 19;
pub(super) const INT8: u32 = 20;
pub(super) const INT2: u32 = 21;
pub(super) const INT4: u32 = 23;
pub(super) const TEXT: u32 = 25;
pub(super) const JSON: u32 = 114;
pub(super) const FLOAT4: u32 = 700;
pub(super) const FLOAT8: u32 = 701;
pub(super) const BPCHAR: u32 = 1042;
pub(super) const VARCHAR: u32 = 1043;
pub(super) const DATE: u32 = 1082;
pub(super) const TIMESTAMP: u32 = 1114;
pub(super) const TIMESTAMPTZ: u32 = 1184;
pub(super) const NUMERIC: u32 = 1700;

/// A value decoded into what it means, comparable across formats.
#[derive(Debug, Clone)]
pub enum Canon {
    Null,
    Int(i64),
    Numeric(Decimal),
    /// A NUMERIC too wide for rust_decimal, or NaN/Infinity: normalized text.
    NumericText(String),
    Float(f64),
    Bool(bool),
    /// Microseconds since 2000-01-01 (UTC for timestamptz).
    Timestamp(i64),
    /// Days since 2000-01-01.
    Date(i64),
    /// Text, and bytea and other bytes compared as they are.
    Bytes(Bytes),
    /// A value of a type not decoded here, in a format the other side may not share.
    Opaque(i16, Bytes),
}

impl Canon {
    fn rank(&self) -> u8 {
        match self {
            Canon::Null => 0,
            Canon::Int(_) => 1,
            Canon::Numeric(_) => 2,
            Canon::NumericText(_) => 3,
            Canon::Float(_) => 4,
            Canon::Bool(_) => 5,
            Canon::Timestamp(_) => 6,
            Canon::Date(_) => 7,
            Canon::Bytes(_) => 8,
            Canon::Opaque(..) => 9,
        }
    }

    /// A total order, consistent with equality up to the float tolerance `(abs, rel)`.
    pub fn cmp(&self, other: &Canon, tol: (f64, f64)) -> Ordering {
        use Canon::*;
        match (self, other) {
            (Int(a), Int(b)) => a.cmp(b),
            (Numeric(a), Numeric(b)) => a.cmp(b),
            (NumericText(a), NumericText(b)) => a.cmp(b),
            (Float(a), Float(b)) => {
                if floats_equal(*a, *b, tol) {
                    Ordering::Equal
                } else {
                    a.total_cmp(b)
                }
            }
            (Bool(a), Bool(b)) => a.cmp(b),
            (Timestamp(a), Timestamp(b)) | (Date(a), Date(b)) => a.cmp(b),
            (Bytes(a), Bytes(b)) => a.cmp(b),
            // Formats that differ for an undecoded type: not comparable, treated as equal.
            (Opaque(fa, a), Opaque(fb, b)) if fa == fb => a.cmp(b),
            (Opaque(..), Opaque(..)) => Ordering::Equal,
            _ => self.rank().cmp(&other.rank()),
        }
    }

    /// The value as a divergence's `detail` shows it.
    pub fn display(&self) -> Json {
        match self {
            Canon::Null => Json::Null,
            Canon::Int(i) => json!(i),
            Canon::Numeric(d) => json!(d.normalize().to_string()),
            Canon::NumericText(t) => json!(t),
            Canon::Float(f) => json!(f.to_string()),
            Canon::Bool(b) => json!(b),
            Canon::Timestamp(us) => json!(timestamp_text(*us)),
            Canon::Date(d) => json!(date_text(*d)),
            Canon::Bytes(b) | Canon::Opaque(_, b) => match std::str::from_utf8(b) {
                Ok(s) => json!(s),
                Err(_) => json!(format!("\\x{}", hex(b))),
            },
        }
    }
}

fn floats_equal(a: f64, b: f64, (abs, rel): (f64, f64)) -> bool {
    if a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    let d = (a - b).abs();
    d <= abs || d <= rel * a.abs().max(b.abs())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decodes one value. Text that cannot be read as its type is kept as bytes.
pub fn canon(type_oid: u32, format: i16, value: Option<&Bytes>) -> Canon {
    let Some(b) = value else {
        return Canon::Null;
    };
    let decoded = if format == 1 {
        decode_binary(type_oid, b)
    } else {
        decode_text(type_oid, b)
    };
    decoded.unwrap_or_else(|| match known(type_oid) {
        true => Canon::Bytes(b.clone()),
        false => Canon::Opaque(format, b.clone()),
    })
}

fn known(oid: u32) -> bool {
    matches!(
        oid,
        BOOL | BYTEA
            | NAME
            | INT8
            | INT2
            | INT4
            | TEXT
            | JSON
            | FLOAT4
            | FLOAT8
            | BPCHAR
            | VARCHAR
            | DATE
            | TIMESTAMP
            | TIMESTAMPTZ
            | NUMERIC
    )
}

/// A value in the binary format; `None` when the type is not decoded here or the bytes are not
/// a value of it.
fn decode_binary(oid: u32, b: &Bytes) -> Option<Canon> {
    Some(match oid {
        INT2 | INT4 | INT8 => Canon::Int(match b.len() {
            2 => i16::from_be_bytes([b[0], b[1]]).into(),
            4 => i32::from_be_bytes(b[..4].try_into().ok()?).into(),
            8 => i64::from_be_bytes(b[..8].try_into().ok()?),
            _ => return None,
        }),
        FLOAT4 => Canon::Float(f32::from_be_bytes(b[..].try_into().ok()?).into()),
        FLOAT8 => Canon::Float(f64::from_be_bytes(b[..].try_into().ok()?)),
        NUMERIC => numeric_text(&numeric_binary_to_text(b)?),
        BOOL => Canon::Bool(*b.first()? != 0),
        TIMESTAMP | TIMESTAMPTZ => Canon::Timestamp(i64::from_be_bytes(b[..].try_into().ok()?)),
        DATE => Canon::Date(i32::from_be_bytes(b[..].try_into().ok()?).into()),
        BYTEA | TEXT | VARCHAR | BPCHAR | NAME | JSON => Canon::Bytes(b.clone()),
        _ => return None,
    })
}

/// A value in the text format (ISO DateStyle, `bytea_output = hex`); `None` when the type is
/// not decoded here or the text is not a value of it.
fn decode_text(oid: u32, b: &Bytes) -> Option<Canon> {
    let text = || std::str::from_utf8(b).ok().map(str::trim);
    Some(match oid {
        INT2 | INT4 | INT8 => Canon::Int(text()?.parse().ok()?),
        FLOAT4 | FLOAT8 => Canon::Float(parse_float(text()?)?),
        NUMERIC => numeric_text(text()?),
        BOOL => Canon::Bool(parse_bool(text()?)?),
        TIMESTAMP | TIMESTAMPTZ => Canon::Timestamp(parse_timestamp(text()?)?),
        DATE => Canon::Date(date_value(text()?)?),
        BYTEA => {
            let t = std::str::from_utf8(b).ok()?;
            Canon::Bytes(Bytes::from(unhex(t.strip_prefix("\\x")?)?))
        }
        TEXT | VARCHAR | BPCHAR | NAME | JSON => Canon::Bytes(b.clone()),
        _ => return None,
    })
}

fn parse_bool(t: &str) -> Option<bool> {
    match t {
        "t" | "true" | "on" | "yes" | "1" => Some(true),
        "f" | "false" | "off" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn parse_float(t: &str) -> Option<f64> {
    match t {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => t.parse().ok(),
    }
}

fn unhex(h: &str) -> Option<Vec<u8>> {
    if h.len() % 2 != 0 {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{rs, text};
    use super::super::{compare, CompareOptions, Field, ResultSet};
    use super::*;

    #[test]
    fn floats_within_tolerance() {
        let one = |v: &str| rs(&[("f", FLOAT8)], &[&[Some(v)]]);
        let o = CompareOptions {
            float_abs: 0.0,
            float_rel: 1e-9,
            ..Default::default()
        };
        assert_eq!(compare(&one("0.1"), &one("0.10000000000000001"), &o), None);
        assert_eq!(compare(&one("1e10"), &one("10000000000.000001"), &o), None);
        assert!(compare(&one("1.0"), &one("1.001"), &o).is_some());
        assert_eq!(compare(&one("NaN"), &one("NaN"), &o), None);
        assert_eq!(compare(&one("Infinity"), &one("Infinity"), &o), None);
        let loose = CompareOptions {
            float_abs: 0.01,
            ..o
        };
        assert_eq!(compare(&one("1.0"), &one("1.001"), &loose), None);
    }

    #[test]
    fn text_and_binary_formats_compare_by_value() {
        let t = |oid: u32, v: &str| ResultSet {
            fields: vec![Field::new("c", oid, 0)],
            rows: vec![vec![text(v)]],
        };
        let b = |oid: u32, v: &[u8]| ResultSet {
            fields: vec![Field::new("c", oid, 1)],
            rows: vec![vec![Some(Bytes::copy_from_slice(v))]],
        };
        let o = CompareOptions::default();
        assert_eq!(
            compare(&t(INT4, "7"), &b(INT4, &7i32.to_be_bytes()), &o),
            None
        );
        assert_eq!(
            compare(&t(INT8, "-7"), &b(INT8, &(-7i64).to_be_bytes()), &o),
            None
        );
        assert_eq!(
            compare(&t(INT2, "3"), &b(INT2, &3i16.to_be_bytes()), &o),
            None
        );
        assert_eq!(compare(&t(BOOL, "t"), &b(BOOL, &[1]), &o), None);
        assert_eq!(
            compare(&t(FLOAT8, "1.5"), &b(FLOAT8, &1.5f64.to_be_bytes()), &o),
            None
        );
        assert_eq!(
            compare(&t(FLOAT4, "1.5"), &b(FLOAT4, &1.5f32.to_be_bytes()), &o),
            None
        );
        assert_eq!(
            compare(&t(TEXT, "héllo"), &b(TEXT, "héllo".as_bytes()), &o),
            None
        );
        assert_eq!(
            compare(&t(BYTEA, "\\x00ff"), &b(BYTEA, &[0, 255]), &o),
            None
        );
        // 2000-01-02 = day 1.
        assert_eq!(
            compare(&t(DATE, "2000-01-02"), &b(DATE, &1i32.to_be_bytes()), &o),
            None
        );
        // 2000-01-01 01:00:00+01 = 0 us.
        let zero = 0i64.to_be_bytes();
        assert_eq!(
            compare(
                &t(TIMESTAMPTZ, "2000-01-01 01:00:00+01"),
                &b(TIMESTAMPTZ, &zero),
                &o
            ),
            None
        );
        let us = 1_500_000i64.to_be_bytes();
        assert_eq!(
            compare(
                &t(TIMESTAMPTZ, "2000-01-01 00:00:01.5+00"),
                &b(TIMESTAMPTZ, &us),
                &o
            ),
            None
        );
        assert!(compare(&t(INT4, "8"), &b(INT4, &7i32.to_be_bytes()), &o).is_some());
        // An undecoded type in two formats is not compared; in one format, by its bytes.
        assert_eq!(compare(&t(2950, "x"), &b(2950, &[1, 2]), &o), None);
        assert!(compare(&t(2950, "x"), &t(2950, "y"), &o).is_some());
    }

    #[test]
    fn text_that_is_not_its_type_stays_bytes() {
        let v = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        assert!(matches!(canon(INT4, 0, Some(&v("x"))), Canon::Bytes(_)));
        assert!(matches!(canon(BOOL, 0, Some(&v("maybe"))), Canon::Bytes(_)));
        assert!(matches!(canon(BYTEA, 0, Some(&v("\\x0"))), Canon::Bytes(_)));
        assert!(matches!(canon(2950, 1, Some(&v("x"))), Canon::Opaque(1, _)));
        assert!(matches!(canon(INT4, 0, None), Canon::Null));
        assert_eq!(
            canon(BYTEA, 1, Some(&Bytes::from_static(&[0, 255]))).display(),
            "\\x00ff"
        );
    }
}
