//! Comparing two query results as the wire carried them: the primary's answer and the
//! secondary's answer to the same read (shadow reads).
//!
//! Results are compared in four steps, stopping at the first that differs: column count, column
//! types (and names), then rows. Rows are compared in order only when the query has ORDER BY;
//! otherwise as multisets. Values are compared by what they mean, not by their bytes: each is
//! decoded into a [`Canon`] from its text or binary format, so `1.50` equals `1.5` (NUMERIC by
//! value with rust_decimal; values wider than it holds by normalized text), floats are equal
//! within a tolerance, and a text `t` equals a binary `0x01`. Types not decoded here are compared
//! by their bytes when both sides used the same format, and skipped when they did not.
//!
//! When the result holds the rule's key columns, rows are matched by key, so a changed value is
//! reported as "the row with this key, these columns". The [`Difference`] serializes to the
//! `detail` of a `read_mismatch` divergence; row values are left out when redacted.

use std::cmp::Ordering;
use std::str::FromStr;

use bytes::Bytes;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value as Json};

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

impl Field {
    pub fn new(name: &str, type_oid: u32, format: i16) -> Field {
        Field {
            name: name.to_string(),
            type_oid,
            format,
        }
    }
}

/// A result as the wire carried it: the RowDescription fields and the DataRow values (`None` is
/// NULL).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultSet {
    pub fields: Vec<Field>,
    pub rows: Vec<Vec<Option<Bytes>>>,
}

/// How to compare.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The query has ORDER BY: rows must come in the same order.
    pub ordered: bool,
    /// Key columns (by name) that identify a row; used only when the result has them all.
    pub key: Vec<String>,
    /// Floats are equal when `|a - b| <= float_abs` ...
    pub float_abs: f64,
    /// ... or `|a - b| <= float_rel * max(|a|, |b|)`.
    pub float_rel: f64,
    /// Leave row values out of the difference (key column names and row indexes stay).
    pub redact: bool,
    /// At most this many rows are listed in each of `changed`, `missing`, `extra`.
    pub max_listed: usize,
    /// Columns (by the primary's name) left out of the comparison: their types and values.
    pub ignore: Vec<String>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            ordered: false,
            key: Vec::new(),
            float_abs: 1e-9,
            float_rel: 1e-9,
            redact: true,
            max_listed: 10,
            ignore: Vec::new(),
        }
    }
}

/// What differs, at the first step that found a difference.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    Columns,
    Types,
    RowCount,
    Order,
    Values,
}

/// A difference between the two results, ready to be a divergence's `detail`.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub what: What,
    pub primary_rows: usize,
    pub secondary_rows: usize,
    /// The structured detail (see the module docs).
    pub detail: Json,
}

/// Compares the primary's result with the secondary's; `None` when they are equal.
pub fn compare(p: &ResultSet, s: &ResultSet, opts: &CompareOptions) -> Option<Difference> {
    let diff = |what: What, detail: Json| {
        Some(Difference {
            what,
            primary_rows: p.rows.len(),
            secondary_rows: s.rows.len(),
            detail,
        })
    };
    if p.fields.len() != s.fields.len() {
        return diff(
            What::Columns,
            json!({"what": "columns", "primary_columns": names(&p.fields),
                   "secondary_columns": names(&s.fields)}),
        );
    }
    let kept;
    let (p, s) = if opts.ignore.is_empty() {
        (p, s)
    } else {
        kept = without_ignored(p, s, &opts.ignore);
        (&kept.0, &kept.1)
    };
    let mismatched: Vec<Json> = p
        .fields
        .iter()
        .zip(&s.fields)
        .filter(|(a, b)| a.type_oid != b.type_oid || a.name != b.name)
        .map(|(a, b)| {
            json!({"primary": {"name": a.name, "type_oid": a.type_oid},
                   "secondary": {"name": b.name, "type_oid": b.type_oid}})
        })
        .collect();
    if !mismatched.is_empty() {
        return diff(What::Types, json!({"what": "types", "columns": mismatched}));
    }
    let ctx = Ctx::new(p, s, opts);
    let found = if opts.ordered {
        ctx.ordered()
    } else {
        ctx.multiset()
    };
    let (what, detail) = found?;
    diff(what, detail)
}

/// Both results without the columns the primary names in `ignore` (same positions on both
/// sides: the column counts are equal).
fn without_ignored(p: &ResultSet, s: &ResultSet, ignore: &[String]) -> (ResultSet, ResultSet) {
    let keep: Vec<usize> = (0..p.fields.len())
        .filter(|&i| !ignore.contains(&p.fields[i].name))
        .collect();
    let project = |r: &ResultSet| ResultSet {
        fields: keep.iter().map(|&i| r.fields[i].clone()).collect(),
        rows: r
            .rows
            .iter()
            .map(|row| {
                keep.iter()
                    .map(|&i| row.get(i).cloned().flatten())
                    .collect()
            })
            .collect(),
    };
    (project(p), project(s))
}

fn names(fields: &[Field]) -> Vec<&str> {
    fields.iter().map(|f| f.name.as_str()).collect()
}

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

    /// A total order, consistent with [`Canon::equal`] up to the float tolerance.
    fn cmp(&self, other: &Canon, tol: (f64, f64)) -> Ordering {
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

    fn display(&self) -> Json {
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
    decode(type_oid, format, b).unwrap_or_else(|| match known(type_oid) {
        true => Canon::Bytes(b.clone()),
        false => Canon::Opaque(format, b.clone()),
    })
}

const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const NAME: u32 = 19;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const BPCHAR: u32 = 1042;
const VARCHAR: u32 = 1043;
const DATE: u32 = 1082;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const NUMERIC: u32 = 1700;

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

fn decode(oid: u32, format: i16, b: &Bytes) -> Option<Canon> {
    let text = || std::str::from_utf8(b).ok().map(str::trim);
    let binary = format == 1;
    Some(match oid {
        INT2 | INT4 | INT8 if binary => Canon::Int(match b.len() {
            2 => i16::from_be_bytes([b[0], b[1]]).into(),
            4 => i32::from_be_bytes(b[..4].try_into().ok()?).into(),
            8 => i64::from_be_bytes(b[..8].try_into().ok()?),
            _ => return None,
        }),
        INT2 | INT4 | INT8 => Canon::Int(text()?.parse().ok()?),
        FLOAT4 if binary => Canon::Float(f32::from_be_bytes(b[..].try_into().ok()?).into()),
        FLOAT8 if binary => Canon::Float(f64::from_be_bytes(b[..].try_into().ok()?)),
        FLOAT4 | FLOAT8 => Canon::Float(parse_float(text()?)?),
        NUMERIC if binary => numeric_text(&numeric_binary_to_text(b)?),
        NUMERIC => numeric_text(text()?),
        BOOL if binary => Canon::Bool(*b.first()? != 0),
        BOOL => Canon::Bool(match text()? {
            "t" | "true" | "on" | "yes" | "1" => true,
            "f" | "false" | "off" | "no" | "0" => false,
            _ => return None,
        }),
        TIMESTAMP | TIMESTAMPTZ if binary => {
            Canon::Timestamp(i64::from_be_bytes(b[..].try_into().ok()?))
        }
        TIMESTAMP | TIMESTAMPTZ => Canon::Timestamp(parse_timestamp(text()?)?),
        DATE if binary => Canon::Date(i32::from_be_bytes(b[..].try_into().ok()?).into()),
        DATE => Canon::Date(match text()? {
            "infinity" => i32::MAX.into(),
            "-infinity" => i32::MIN.into(),
            t => parse_date(t)?,
        }),
        BYTEA if binary => Canon::Bytes(b.clone()),
        BYTEA => {
            let t = std::str::from_utf8(b).ok()?;
            let h = t.strip_prefix("\\x")?;
            Canon::Bytes(Bytes::from(unhex(h)?))
        }
        TEXT | VARCHAR | BPCHAR | NAME | JSON => Canon::Bytes(b.clone()),
        _ => return None,
    })
}

fn parse_float(t: &str) -> Option<f64> {
    match t {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => t.parse().ok(),
    }
}

fn numeric_text(t: &str) -> Canon {
    match Decimal::from_str(t) {
        Ok(d) => Canon::Numeric(d.normalize()),
        Err(_) => Canon::NumericText(normalize_numeric(t)),
    }
}

/// `-007.500` is `-7.5`; `-0.0` is `0`; NaN and Infinity stay as they are.
fn normalize_numeric(t: &str) -> String {
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if !digits.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return t.to_string();
    }
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let mut out = String::new();
    if neg && (int != "0" || !frac.is_empty()) {
        out.push('-');
    }
    out.push_str(int);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// The binary NUMERIC format (ndigits, weight, sign, dscale, base-10000 digits) as text.
fn numeric_binary_to_text(b: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i64;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Option<_>>()?;
    let mut int = String::new();
    let mut frac = String::new();
    for (i, d) in digits.iter().enumerate() {
        let pos = weight - i as i64;
        if pos >= 0 {
            int.push_str(&format!("{d:04}"));
        } else {
            frac.push_str(&format!("{d:04}"));
        }
    }
    // Zero groups between the last digit and the decimal point, or before the first digit.
    let last_pos = weight - ndigits as i64 + 1;
    if last_pos > 0 {
        for _ in 0..last_pos {
            int.push_str("0000");
        }
    }
    if weight < -1 {
        frac = "0000".repeat((-weight - 1) as usize) + &frac;
    }
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    s.push_str(if int.is_empty() { "0" } else { &int });
    if dscale > 0 || !frac.is_empty() {
        s.push('.');
        s.push_str(&frac);
    }
    Some(normalize_numeric(&s))
}

/// Days since 2000-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 - 10_957
}

/// The date of a day number (days since 2000-01-01), as `YYYY-MM-DD`.
fn date_text(days: i64) -> String {
    let (year, month, day) = super::civil_from_days(days + 10_957);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Microseconds since 2000-01-01 as `YYYY-MM-DD HH:MM:SS[.ffffff]+00`.
fn timestamp_text(us: i64) -> String {
    match us {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let mut s = format!(
        "{} {:02}:{:02}:{:02}",
        date_text(days),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if frac != 0 {
        s.push_str(format!(".{frac:06}").trim_end_matches('0'));
    }
    s.push_str("+00");
    s
}

/// `YYYY-MM-DD` (ISO DateStyle).
fn parse_date(t: &str) -> Option<i64> {
    let mut it = t.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then(|| days_from_civil(y, m, d))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]]` (ISO DateStyle): microseconds since
/// 2000-01-01 00:00 UTC (local time for a timestamp without an offset).
fn parse_timestamp(t: &str) -> Option<i64> {
    match t {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (date, rest) = t.split_once([' ', 'T'])?;
    let days = parse_date(date)?;
    let split = rest.find(['+', '-']).unwrap_or(rest.len());
    let (time, offset) = rest.split_at(split);
    let mut hms = time.splitn(3, ':');
    let h: i64 = hms.next()?.parse().ok()?;
    let mi: i64 = hms.next()?.parse().ok()?;
    let sec = hms.next()?;
    let (s, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let s: i64 = s.parse().ok()?;
    let mut us: i64 = 0;
    if !frac.is_empty() {
        if frac.len() > 6 || !frac.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        us = format!("{frac:0<6}").parse().ok()?;
    }
    let mut off = 0;
    if let Some(sign) = offset.chars().next() {
        let mut parts = offset[1..].split(':');
        let oh: i64 = parts.next()?.parse().ok()?;
        let om: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let os: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        off = (oh * 3600 + om * 60 + os) * if sign == '-' { -1 } else { 1 };
    }
    Some(((days * 86_400 + h * 3600 + mi * 60 + s - off) * 1_000_000) + us)
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

/// The decoded results and what rows are matched on.
struct Ctx<'a> {
    p: Vec<Vec<Canon>>,
    s: Vec<Vec<Canon>>,
    names: Vec<&'a str>,
    /// Indexes of the key columns; empty when the result lacks any of them.
    key: Vec<usize>,
    tol: (f64, f64),
    opts: &'a CompareOptions,
}

impl<'a> Ctx<'a> {
    fn new(p: &'a ResultSet, s: &'a ResultSet, opts: &'a CompareOptions) -> Ctx<'a> {
        let decode = |r: &ResultSet| -> Vec<Vec<Canon>> {
            r.rows
                .iter()
                .map(|row| {
                    r.fields
                        .iter()
                        .enumerate()
                        .map(|(i, f)| {
                            canon(f.type_oid, f.format, row.get(i).and_then(Option::as_ref))
                        })
                        .collect()
                })
                .collect()
        };
        let names = names(&p.fields);
        let key: Option<Vec<usize>> = opts
            .key
            .iter()
            .map(|k| names.iter().position(|n| n == k))
            .collect();
        Ctx {
            p: decode(p),
            s: decode(s),
            names,
            key: key.unwrap_or_default(),
            tol: (opts.float_abs, opts.float_rel),
            opts,
        }
    }

    fn cmp_cols(&self, a: &[Canon], b: &[Canon], cols: &[usize]) -> Ordering {
        cols.iter()
            .map(|&i| a[i].cmp(&b[i], self.tol))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    /// Key columns first, then every column: the order both sides are sorted in.
    fn sort_order(&self) -> Vec<usize> {
        let mut cols = self.key.clone();
        cols.extend((0..self.names.len()).filter(|i| !self.key.contains(i)));
        cols
    }

    fn differing_columns(&self, a: &[Canon], b: &[Canon]) -> Vec<usize> {
        (0..self.names.len())
            .filter(|&i| a[i].cmp(&b[i], self.tol).is_ne())
            .collect()
    }

    fn multiset(&self) -> Option<(What, Json)> {
        let order = self.sort_order();
        let sorted = |rows: &[Vec<Canon>]| -> Vec<usize> {
            let mut v: Vec<usize> = (0..rows.len()).collect();
            v.sort_by(|&a, &b| self.cmp_cols(&rows[a], &rows[b], &order));
            v
        };
        let p: Vec<&[Canon]> = sorted(&self.p)
            .into_iter()
            .map(|i| &self.p[i][..])
            .collect();
        let s: Vec<&[Canon]> = sorted(&self.s)
            .into_iter()
            .map(|i| &self.s[i][..])
            .collect();
        // Rows are matched on the key when there is one, else on the whole row.
        let matched_on = if self.key.is_empty() {
            &order
        } else {
            &self.key
        };
        let mut report = Report::default();
        let (mut i, mut j) = (0, 0);
        while i < p.len() || j < s.len() {
            let o = match (p.get(i), s.get(j)) {
                (Some(a), Some(b)) => self.cmp_cols(a, b, matched_on),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match o {
                Ordering::Equal => {
                    let cols = self.differing_columns(p[i], s[j]);
                    if !cols.is_empty() {
                        report.changed.push(self.changed(i, p[i], s[j], &cols));
                    }
                    i += 1;
                    j += 1;
                }
                Ordering::Less => {
                    report.missing.push(self.row_ref(i, p[i]));
                    i += 1;
                }
                Ordering::Greater => {
                    report.extra.push(self.row_ref(j, s[j]));
                    j += 1;
                }
            }
        }
        report.finish(self)
    }

    fn ordered(&self) -> Option<(What, Json)> {
        let mut report = Report::default();
        for (i, (a, b)) in self.p.iter().zip(&self.s).enumerate() {
            let cols = self.differing_columns(a, b);
            if !cols.is_empty() {
                report.changed.push(self.changed(i, a, b, &cols));
            }
        }
        let n = self.p.len().min(self.s.len());
        for (i, r) in self.p.iter().enumerate().skip(n) {
            report.missing.push(self.row_ref(i, r));
        }
        for (i, r) in self.s.iter().enumerate().skip(n) {
            report.extra.push(self.row_ref(i, r));
        }
        if !report.changed.is_empty() && self.p.len() == self.s.len() && self.multiset().is_none() {
            // The same rows, in another order.
            let first = report.changed.first().cloned().unwrap_or(Json::Null);
            return Some((What::Order, json!({"what": "order", "first": first})));
        }
        report.finish(self)
    }

    /// A row as a divergence names it: its index, and its key (values unless redacted).
    fn row_ref(&self, index: usize, row: &[Canon]) -> Json {
        let mut m = Map::new();
        m.insert("index".into(), json!(index));
        if !self.key.is_empty() {
            let key: Json = if self.opts.redact {
                json!(self.key.iter().map(|&k| self.names[k]).collect::<Vec<_>>())
            } else {
                Json::Object(
                    self.key
                        .iter()
                        .map(|&k| (self.names[k].to_string(), row[k].display()))
                        .collect(),
                )
            };
            m.insert("key".into(), key);
        } else if !self.opts.redact {
            m.insert(
                "row".into(),
                self.values(row, &(0..row.len()).collect::<Vec<_>>()),
            );
        }
        Json::Object(m)
    }

    fn changed(&self, index: usize, a: &[Canon], b: &[Canon], cols: &[usize]) -> Json {
        let mut r = self.row_ref(index, a);
        if let Json::Object(m) = &mut r {
            m.insert(
                "columns".into(),
                json!(cols.iter().map(|&c| self.names[c]).collect::<Vec<_>>()),
            );
            if !self.opts.redact {
                m.insert("primary".into(), self.values(a, cols));
                m.insert("secondary".into(), self.values(b, cols));
            }
        }
        r
    }

    fn values(&self, row: &[Canon], cols: &[usize]) -> Json {
        Json::Object(
            cols.iter()
                .map(|&c| (self.names[c].to_string(), row[c].display()))
                .collect(),
        )
    }
}

#[derive(Default)]
struct Report {
    changed: Vec<Json>,
    missing: Vec<Json>,
    extra: Vec<Json>,
}

impl Report {
    fn finish(self, ctx: &Ctx) -> Option<(What, Json)> {
        if self.changed.is_empty() && self.missing.is_empty() && self.extra.is_empty() {
            return None;
        }
        let what = if ctx.p.len() != ctx.s.len() {
            What::RowCount
        } else {
            What::Values
        };
        let max = ctx.opts.max_listed;
        let mut columns: Vec<&str> = Vec::new();
        for c in &self.changed {
            for name in c["columns"].as_array().into_iter().flatten() {
                if let Some(n) = name.as_str().filter(|n| !columns.contains(n)) {
                    columns.push(n);
                }
            }
        }
        let cut = |v: Vec<Json>| v.into_iter().take(max).collect::<Vec<_>>();
        let detail = json!({
            "what": what,
            "ordered": ctx.opts.ordered,
            "key": ctx.key.iter().map(|&k| ctx.names[k]).collect::<Vec<_>>(),
            "columns": columns,
            "changed_rows": self.changed.len(),
            "missing_rows": self.missing.len(),
            "extra_rows": self.extra.len(),
            "changed": cut(self.changed),
            "missing": cut(self.missing),
            "extra": cut(self.extra),
        });
        Some((what, detail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(v: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn rs(fields: &[(&str, u32)], rows: &[&[Option<&str>]]) -> ResultSet {
        ResultSet {
            fields: fields.iter().map(|(n, o)| Field::new(n, *o, 0)).collect(),
            rows: rows
                .iter()
                .map(|r| r.iter().map(|v| v.and_then(text)).collect())
                .collect(),
        }
    }

    fn bars(rows: &[&[Option<&str>]]) -> ResultSet {
        rs(
            &[("symbol", TEXT), ("ts", TIMESTAMPTZ), ("close", NUMERIC)],
            rows,
        )
    }

    fn keyed(redact: bool) -> CompareOptions {
        CompareOptions {
            key: vec!["symbol".into(), "ts".into()],
            redact,
            ..Default::default()
        }
    }

    const T1: &str = "2026-01-05 14:30:00+00";
    const T2: &str = "2026-01-05 14:31:00+00";

    #[test]
    fn the_same_rows_in_another_order_are_equal_unless_ordered() {
        let a = bars(&[
            &[Some("DXY"), Some(T1), Some("100.02")],
            &[Some("DXY"), Some(T2), Some("100.03")],
        ]);
        let b = bars(&[
            &[Some("DXY"), Some(T2), Some("100.030000")],
            &[Some("DXY"), Some(T1), Some("100.020000")],
        ]);
        assert_eq!(compare(&a, &b, &keyed(true)), None);
        let ordered = CompareOptions {
            ordered: true,
            ..keyed(true)
        };
        let d = compare(&a, &b, &ordered).unwrap();
        assert_eq!(d.what, What::Order);
        assert_eq!(compare(&a, &a, &ordered), None);
    }

    #[test]
    fn numeric_by_value_and_wide_numeric_as_text() {
        let one = |v: &str| rs(&[("n", NUMERIC)], &[&[Some(v)]]);
        let o = CompareOptions::default();
        assert_eq!(compare(&one("1.50"), &one("1.5"), &o), None);
        assert_eq!(compare(&one("-0.0"), &one("0"), &o), None);
        assert!(compare(&one("1.50"), &one("1.51"), &o).is_some());
        let wide = "123456789012345678901234567890123456789.5";
        assert_eq!(compare(&one(wide), &one(&format!("{wide}000")), &o), None);
        assert!(compare(
            &one(wide),
            &one("123456789012345678901234567890123456789.4"),
            &o
        )
        .is_some());
        assert_eq!(compare(&one("NaN"), &one("NaN"), &o), None);
    }

    #[test]
    fn binary_numeric_decodes() {
        // 100.02 = weight 0, digits [100, 200], dscale 2.
        let b = [0, 2, 0, 0, 0, 0, 0, 2, 0, 100, 0, 200];
        assert_eq!(numeric_binary_to_text(&b).unwrap(), "100.02");
        // 0.0005 = weight -1, digits [5], dscale 4.
        let b = [0, 1, 0xff, 0xff, 0, 0, 0, 4, 0, 5];
        assert_eq!(numeric_binary_to_text(&b).unwrap(), "0.0005");
        // -20000 = weight 1, digits [2], dscale 0.
        let b = [0, 1, 0, 1, 0x40, 0, 0, 0, 0, 2];
        assert_eq!(numeric_binary_to_text(&b).unwrap(), "-20000");
        // 0.000001 = weight -2, digits [100].
        let b = [0, 1, 0xff, 0xfe, 0, 0, 0, 8, 0, 100];
        assert_eq!(numeric_binary_to_text(&b).unwrap(), "0.000001");
    }

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
    fn a_changed_value_is_reported_with_its_key_and_column() {
        let a = bars(&[
            &[Some("DXY"), Some(T1), Some("100.02")],
            &[Some("DXY"), Some(T2), Some("100.03")],
        ]);
        let b = bars(&[
            &[Some("DXY"), Some(T1), Some("100.02")],
            &[Some("DXY"), Some(T2), Some("999")],
        ]);
        let d = compare(&a, &b, &keyed(false)).unwrap();
        assert_eq!(d.what, What::Values);
        let c = &d.detail["changed"][0];
        assert_eq!(c["key"]["symbol"], "DXY");
        assert!(c["key"]["ts"].is_string());
        assert_eq!(c["columns"], json!(["close"]));
        assert_eq!(c["primary"]["close"], "100.03");
        assert_eq!(c["secondary"]["close"], "999");
        assert_eq!(d.detail["columns"], json!(["close"]));
        // Redacted: the key's column names and the row's index, no values.
        let d = compare(&a, &b, &keyed(true)).unwrap();
        let c = &d.detail["changed"][0];
        assert_eq!(c["key"], json!(["symbol", "ts"]));
        assert_eq!(c["index"], 1);
        assert!(c.get("primary").is_none());
        assert!(!d.detail.to_string().contains("999"));
    }

    #[test]
    fn row_count_differences_name_the_missing_and_extra_rows() {
        let a = bars(&[
            &[Some("DXY"), Some(T1), Some("1")],
            &[Some("DXY"), Some(T2), Some("2")],
        ]);
        let b = bars(&[&[Some("DXY"), Some(T2), Some("2")]]);
        let d = compare(&a, &b, &keyed(false)).unwrap();
        assert_eq!(d.what, What::RowCount);
        assert_eq!((d.primary_rows, d.secondary_rows), (2, 1));
        assert_eq!(d.detail["missing_rows"], 1);
        assert_eq!(d.detail["missing"][0]["key"]["ts"], T1);
        let d = compare(&b, &a, &keyed(true)).unwrap();
        assert_eq!(d.detail["extra_rows"], 1);
    }

    #[test]
    fn ignored_columns_are_left_out_of_types_and_values() {
        let a = rs(
            &[
                ("symbol", TEXT),
                ("updated_at", TIMESTAMPTZ),
                ("close", NUMERIC),
            ],
            &[&[Some("DXY"), Some(T1), Some("1.5")]],
        );
        let b = rs(
            &[("symbol", TEXT), ("updated_at", TEXT), ("close", NUMERIC)],
            &[&[Some("DXY"), Some("later"), Some("1.50")]],
        );
        let o = CompareOptions {
            key: vec!["symbol".into()],
            ignore: vec!["updated_at".into()],
            ..Default::default()
        };
        assert_eq!(compare(&a, &b, &o), None);
        assert!(compare(&a, &b, &CompareOptions::default()).is_some());
        let c = rs(
            &[("symbol", TEXT), ("updated_at", TEXT), ("close", NUMERIC)],
            &[&[Some("DXY"), Some("later"), Some("2")]],
        );
        let d = compare(&a, &c, &o).unwrap();
        assert_eq!(d.detail["columns"], json!(["close"]));
        assert_eq!(d.detail["changed"][0]["key"], json!(["symbol"]));
    }

    #[test]
    fn column_and_type_differences() {
        let a = rs(&[("a", INT4), ("b", TEXT)], &[]);
        let b = rs(&[("a", INT4)], &[]);
        assert_eq!(
            compare(&a, &b, &CompareOptions::default()).unwrap().what,
            What::Columns
        );
        let b = rs(&[("a", INT8), ("b", TEXT)], &[]);
        let d = compare(&a, &b, &CompareOptions::default()).unwrap();
        assert_eq!(d.what, What::Types);
        assert_eq!(d.detail["columns"][0]["secondary"]["type_oid"], INT8);
    }

    #[test]
    fn dates_and_timestamps_round_trip() {
        for t in [
            "2026-01-05 14:30:00+00",
            "1999-12-31 23:59:59.5+00",
            "2000-02-29 00:00:00+00",
        ] {
            assert_eq!(timestamp_text(parse_timestamp(t).unwrap()), t);
        }
        assert_eq!(
            parse_timestamp("2026-01-05 15:30:00+01"),
            parse_timestamp("2026-01-05 14:30:00+00")
        );
        assert_eq!(
            parse_timestamp("2026-01-05 09:00:00-05:30"),
            parse_timestamp("2026-01-05 14:30:00+00")
        );
        assert_eq!(date_text(parse_date("1970-01-01").unwrap()), "1970-01-01");
    }

    #[test]
    fn nulls_compare() {
        let a = rs(&[("a", INT4)], &[&[None], &[Some("1")]]);
        let b = rs(&[("a", INT4)], &[&[Some("1")], &[None]]);
        assert_eq!(compare(&a, &b, &CompareOptions::default()), None);
        let c = rs(&[("a", INT4)], &[&[Some("1")], &[Some("0")]]);
        assert!(compare(&a, &c, &CompareOptions::default()).is_some());
    }

    fn table(rows: &[(i64, i64)]) -> ResultSet {
        ResultSet {
            fields: vec![Field::new("k", INT8, 0), Field::new("v", INT8, 0)],
            rows: rows
                .iter()
                .map(|(k, v)| vec![text(&k.to_string()), text(&v.to_string())])
                .collect(),
        }
    }

    proptest! {
        #[test]
        fn a_permutation_is_the_same_multiset(
            rows in prop::collection::vec((0i64..5, 0i64..5), 0..20),
            seed in any::<u64>(),
            keyed_on in any::<bool>(),
        ) {
            let mut shuffled = rows.clone();
            // A deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let o = CompareOptions {
                key: if keyed_on { vec!["k".into()] } else { vec![] },
                ..Default::default()
            };
            prop_assert_eq!(compare(&table(&rows), &table(&shuffled), &o), None);
        }

        #[test]
        fn multisets_differ_exactly_when_their_counts_differ(
            a in prop::collection::vec((0i64..3, 0i64..3), 0..12),
            b in prop::collection::vec((0i64..3, 0i64..3), 0..12),
            keyed_on in any::<bool>(),
        ) {
            let count = |v: &[(i64, i64)]| {
                let mut m = std::collections::BTreeMap::new();
                for r in v { *m.entry(*r).or_insert(0) += 1; }
                m
            };
            let o = CompareOptions {
                key: if keyed_on { vec!["k".into()] } else { vec![] },
                ..Default::default()
            };
            let d = compare(&table(&a), &table(&b), &o);
            prop_assert_eq!(d.is_none(), count(&a) == count(&b));
            if let Some(d) = d {
                // Every row is accounted for: matched, missing or extra.
                let missing = d.detail["missing_rows"].as_u64().unwrap() as usize;
                let extra = d.detail["extra_rows"].as_u64().unwrap() as usize;
                prop_assert_eq!(a.len() - missing, b.len() - extra);
            }
        }

        #[test]
        fn one_changed_value_is_one_changed_row_when_keyed(
            keys in prop::collection::btree_set(0i64..100, 1..15),
            pick in any::<prop::sample::Index>(),
        ) {
            let rows: Vec<(i64, i64)> = keys.iter().map(|&k| (k, k * 2)).collect();
            let mut changed = rows.clone();
            let i = pick.index(changed.len());
            changed[i].1 += 1;
            let o = CompareOptions { key: vec!["k".into()], redact: false, ..Default::default() };
            let d = compare(&table(&rows), &table(&changed), &o).unwrap();
            prop_assert_eq!(d.what, What::Values);
            prop_assert_eq!(d.detail["changed_rows"].as_u64(), Some(1));
            prop_assert_eq!(&d.detail["changed"][0]["key"]["k"], &json!(rows[i].0));
            prop_assert_eq!(&d.detail["changed"][0]["columns"], &json!(["v"]));
        }
    }
}
