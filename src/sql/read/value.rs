//! The values the implication prover compares: a rule column's type as far as comparisons go
//! ([`Ty`]), and literals and bound parameters read as values of that type ([`Val`]). Each
//! reading is exact or refused: a text that does not parse unambiguously is no value, so the
//! prover claims nothing from it (a false claim serves a read from rows the secondary lacks).

use std::cmp::Ordering;

/// How a rule column's values compare, from its type name (`format_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// smallint, integer, bigint (the column's type oid): compared as exact numbers.
    Int(u32),
    Numeric,
    /// text, varchar: equality byte for byte; ordering depends on the collation, not claimed.
    Text(u32),
    Timestamp,
    /// Only literals with an explicit offset: without one the session's TimeZone decides.
    TimestampTz,
    Date,
    Bool,
    /// Any other type: only conditions written out identically are matched.
    Other,
}

impl Ty {
    /// The comparison type of a column of type `name` (as `format_type` spells it).
    pub fn of_column(name: &str) -> Ty {
        let n = name.trim().to_ascii_lowercase();
        let base = n.split('(').next().unwrap_or("").trim();
        match base {
            "smallint" => Ty::Int(21),
            "integer" => Ty::Int(23),
            "bigint" => Ty::Int(20),
            "numeric" => Ty::Numeric,
            "text" => Ty::Text(25),
            "character varying" => Ty::Text(1043),
            "date" => Ty::Date,
            "boolean" => Ty::Bool,
            _ if n == "timestamp without time zone" || n.starts_with("timestamp(") => {
                match n.ends_with("without time zone") {
                    true => Ty::Timestamp,
                    false => Ty::TimestampTz,
                }
            }
            "timestamp with time zone" => Ty::TimestampTz,
            _ => Ty::Other,
        }
    }

    /// The comparison type a cast names (`::int`, `CAST(x AS timestamptz)`).
    pub fn of_cast(name: &str) -> Ty {
        match name.trim().to_ascii_lowercase().as_str() {
            "int2" | "smallint" => Ty::Int(21),
            "int" | "int4" | "integer" => Ty::Int(23),
            "int8" | "bigint" => Ty::Int(20),
            "text" | "varchar" | "character varying" => Ty::Text(25),
            "timestamp" | "timestamp without time zone" => Ty::Timestamp,
            "timestamptz" | "timestamp with time zone" => Ty::TimestampTz,
            "date" => Ty::Date,
            "bool" | "boolean" => Ty::Bool,
            n if n == "numeric" || n == "decimal" => Ty::Numeric,
            _ => Ty::Other,
        }
    }

    /// Whether its values are totally ordered the same way whatever the session: numbers,
    /// timestamps, dates, booleans (text is ordered by its collation).
    pub fn ordered(self) -> bool {
        !matches!(self, Ty::Text(_) | Ty::Other)
    }

    /// Whether two values that differ here are unequal under the column's `=`: not for text,
    /// whose collation might be nondeterministic (case-insensitive, say).
    pub fn distinct(self) -> bool {
        !matches!(self, Ty::Text(_) | Ty::Other)
    }
}

/// A value of one [`Ty`], normalized so that equal values are equal here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Num(Dec),
    Text(String),
    /// Microseconds since 1970-01-01 (UTC for timestamptz).
    Time(i64),
    Date(i64),
    Bool(bool),
}

impl Val {
    /// The order of two values of one type (`None` for values of different kinds).
    pub fn order(&self, other: &Val) -> Option<Ordering> {
        match (self, other) {
            (Val::Num(a), Val::Num(b)) => Some(a.cmp(b)),
            (Val::Text(a), Val::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Val::Time(a), Val::Time(b)) | (Val::Date(a), Val::Date(b)) => Some(a.cmp(b)),
            (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// A literal's text read as a value of a column of type `col`, written as type `lit`
    /// (a cast, or `col` itself for an untyped string); `None` when not exact.
    pub fn parse(text: &str, lit: Ty, col: Ty) -> Option<Val> {
        let v = match lit {
            Ty::Int(_) => Val::Num(Dec::parse(text).filter(|d| d.is_integer())?),
            Ty::Numeric => Val::Num(Dec::parse(text)?),
            Ty::Text(_) => Val::Text(text.to_string()),
            Ty::Timestamp => Val::Time(timestamp(text, false)?),
            Ty::TimestampTz => Val::Time(timestamp(text, true)?),
            Ty::Date => Val::Date(date(text.trim())?),
            Ty::Bool => Val::Bool(boolean(text)?),
            Ty::Other => return None,
        };
        convert(v, lit, col)
    }
}

/// A value of type `from` as the column of type `to` compares it.
fn convert(v: Val, from: Ty, to: Ty) -> Option<Val> {
    match (from, to, v) {
        (Ty::Int(_) | Ty::Numeric, Ty::Int(_) | Ty::Numeric, v) => Some(v),
        (Ty::Text(_), Ty::Text(_), v) => Some(v),
        // A date is its midnight as a timestamp.
        (Ty::Date, Ty::Timestamp, Val::Date(d)) => Some(Val::Time(d * DAY)),
        (f, t, v) if f == t => Some(v),
        _ => None,
    }
}

const DAY: i64 = 86_400_000_000;

/// An exact decimal: sign, integer digits without leading zeros, fraction digits without
/// trailing zeros (zero is positive with no digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dec {
    negative: bool,
    int: String,
    frac: String,
}

impl Dec {
    /// `[+-]digits[.digits]`, or `.digits`, with an optional exponent; `None` otherwise
    /// (NaN, infinity, anything else).
    pub fn parse(text: &str) -> Option<Dec> {
        let t = text.trim();
        let (negative, t) = match t.as_bytes().first()? {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let (mantissa, exp) = match t.find(['e', 'E']) {
            Some(i) => (&t[..i], t[i + 1..].parse::<i32>().ok()?),
            None => (t, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() && frac.is_empty() || !digits(int) || !digits(frac) || exp.abs() > 1000 {
            return None;
        }
        // Move the point by the exponent.
        let all = format!("{int}{frac}");
        let point = int.len() as i64 + exp as i64;
        let (i, f) = if point <= 0 {
            (
                String::new(),
                format!("{}{all}", "0".repeat((-point) as usize)),
            )
        } else if point as usize >= all.len() {
            (
                format!("{all}{}", "0".repeat(point as usize - all.len())),
                String::new(),
            )
        } else {
            (
                all[..point as usize].to_string(),
                all[point as usize..].to_string(),
            )
        };
        Some(Dec::normalized(negative, &i, &f))
    }

    fn normalized(negative: bool, int: &str, frac: &str) -> Dec {
        let int = int.trim_start_matches('0').to_string();
        let frac = frac.trim_end_matches('0').to_string();
        let zero = int.is_empty() && frac.is_empty();
        Dec {
            negative: negative && !zero,
            int,
            frac,
        }
    }

    fn is_integer(&self) -> bool {
        self.frac.is_empty()
    }

    fn magnitude(&self, other: &Dec) -> Ordering {
        self.int
            .len()
            .cmp(&other.int.len())
            .then_with(|| self.int.cmp(&other.int))
            .then_with(|| self.frac.cmp(&other.frac))
    }
}

impl Ord for Dec {
    fn cmp(&self, other: &Dec) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.magnitude(other),
            (true, true) => other.magnitude(self),
        }
    }
}

impl PartialOrd for Dec {
    fn partial_cmp(&self, other: &Dec) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `t`, `true`, `f`, `false` in any case.
fn boolean(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" => Some(true),
        "f" | "false" => Some(false),
        _ => None,
    }
}

/// Days since 1970-01-01 of an ISO date `YYYY-MM-DD` (four-digit year).
fn date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(&s[..4])?, num(&s[5..7])?, num(&s[8..])?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in[m as usize - 1] {
        return None;
    }
    Some(crate::calendar::days_from_civil(y, m, d))
}

/// Digits only, as a number.
fn num(s: &str) -> Option<i64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Microseconds since the epoch of an ISO timestamp `YYYY-MM-DD[( |T)HH:MM[:SS[.ffffff]]]`;
/// with `tz`, it must end in an explicit offset (`Z`, `+HH`, `+HH:MM`, `-HHMM`), without, it
/// must not have one (a timestamp column ignores it).
fn timestamp(text: &str, tz: bool) -> Option<i64> {
    let s = text.trim();
    let day = date(s.get(..10)?)? * DAY;
    let rest = &s[10..];
    let (clock, offset) = split_offset(rest);
    if tz != offset.is_some() {
        return None;
    }
    let time = match clock.strip_prefix([' ', 'T']) {
        Some(c) => clock_micros(c)?,
        None if clock.is_empty() => 0,
        None => return None,
    };
    Some(day + time - offset.unwrap_or(0))
}

/// The time part and the offset (in microseconds east of UTC) of what follows the date.
fn split_offset(rest: &str) -> (&str, Option<i64>) {
    if let Some(c) = rest.strip_suffix('Z') {
        return (c, Some(0));
    }
    let Some(i) = rest.rfind(['+', '-']) else {
        return (rest, None);
    };
    let (clock, off) = (&rest[..i], &rest[i + 1..]);
    let sign = if rest.as_bytes()[i] == b'-' { -1 } else { 1 };
    let (h, m) = match (off.len(), off.split_once(':')) {
        (2, None) => (num(off), Some(0)),
        (4, None) => (num(&off[..2]), num(&off[2..])),
        (5, Some((h, m))) if h.len() == 2 => (num(h), num(m)),
        // Not an offset PostgreSQL would read the same way: refuse the whole text.
        _ => return ("?", Some(0)),
    };
    match (h, m) {
        (Some(h), Some(m)) if h <= 15 && m < 60 => (clock, Some(sign * (h * 60 + m) * 60_000_000)),
        _ => ("?", Some(0)),
    }
}

/// `HH:MM[:SS[.ffffff]]` in microseconds.
fn clock_micros(c: &str) -> Option<i64> {
    let mut parts = c.splitn(3, ':');
    let (h, m) = (parts.next()?, parts.next()?);
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m) = (num(h)?, num(m)?);
    let (s, micros) = match parts.next() {
        None => (0, 0),
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
            if whole.len() != 2 || frac.len() > 6 || (sec.contains('.') && frac.is_empty()) {
                return None;
            }
            let f = if frac.is_empty() { 0 } else { num(frac)? };
            (num(whole)?, f * 10_i64.pow(6 - frac.len() as u32))
        }
    };
    (h < 24 && m < 60 && s < 60).then_some(((h * 60 + m) * 60 + s) * 1_000_000 + micros)
}

/// A bound parameter as a value of a column of type `col`: `format` 0 (text) or 1 (binary),
/// `oid` its type as declared or described (0: unknown, then `param`, the type the server
/// gives a parameter compared with the column or cast).
pub fn decode(bytes: &[u8], format: u16, oid: u32, param: Ty, col: Ty) -> Option<Val> {
    let ty = match oid {
        0 => param,
        21 | 23 | 20 if matches!(col, Ty::Int(_) | Ty::Numeric) => Ty::Int(oid),
        1700 if matches!(col, Ty::Int(_) | Ty::Numeric) => Ty::Numeric,
        25 | 1043 if matches!(col, Ty::Text(_)) => Ty::Text(oid),
        1114 => Ty::Timestamp,
        1184 => Ty::TimestampTz,
        1082 => Ty::Date,
        16 => Ty::Bool,
        _ => return None,
    };
    let v = match format {
        0 => return Val::parse(std::str::from_utf8(bytes).ok()?, ty, col),
        1 => binary(bytes, ty)?,
        _ => return None,
    };
    convert(v, ty, col)
}

/// PostgreSQL's binary send format of `ty`.
fn binary(b: &[u8], ty: Ty) -> Option<Val> {
    use crate::calendar::PG_EPOCH_DAYS;
    let v = match (ty, b.len()) {
        (Ty::Int(21), 2) => Val::Num(Dec::parse(
            &i16::from_be_bytes(b.try_into().ok()?).to_string(),
        )?),
        (Ty::Int(23), 4) => Val::Num(Dec::parse(
            &i32::from_be_bytes(b.try_into().ok()?).to_string(),
        )?),
        (Ty::Int(20), 8) => Val::Num(Dec::parse(
            &i64::from_be_bytes(b.try_into().ok()?).to_string(),
        )?),
        (Ty::Numeric, _) => Val::Num(numeric(b)?),
        (Ty::Text(_), _) => Val::Text(std::str::from_utf8(b).ok()?.to_string()),
        (Ty::Timestamp | Ty::TimestampTz, 8) => {
            let t = i64::from_be_bytes(b.try_into().ok()?);
            if t == i64::MIN || t == i64::MAX {
                return None;
            }
            Val::Time(t.checked_add(PG_EPOCH_DAYS * DAY)?)
        }
        (Ty::Date, 4) => {
            let d = i32::from_be_bytes(b.try_into().ok()?);
            if d == i32::MIN || d == i32::MAX {
                return None;
            }
            Val::Date(d as i64 + PG_EPOCH_DAYS)
        }
        (Ty::Bool, 1) if b[0] <= 1 => Val::Bool(b[0] == 1),
        _ => return None,
    };
    Some(v)
}

/// numeric's binary format: ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric(b: &[u8]) -> Option<Dec> {
    let word = |i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
    let (n, weight, sign) = (word(0)? as usize, word(2)? as i16, word(4)?);
    if b.len() != 8 + 2 * n || !matches!(sign, 0 | 0x4000) {
        return None;
    }
    let mut digits = String::with_capacity(4 * n);
    for i in 0..n {
        let d = word(8 + 2 * i)?;
        if d > 9999 {
            return None;
        }
        digits.push_str(&format!("{d:04}"));
    }
    // The first group's value is 10000^weight.
    let exp = 4 * (weight as i32 + 1) - digits.len() as i32;
    let text = format!("{}{}e{exp}", if sign == 0 { "" } else { "-" }, digits);
    match n {
        0 => Dec::parse("0"),
        _ => Dec::parse(&text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Dec {
        Dec::parse(s).unwrap()
    }

    #[test]
    fn decimals_compare_exactly() {
        assert_eq!(dec("100"), dec("100.000"));
        assert_eq!(dec("1e2"), dec("100"));
        assert_eq!(dec("-0.0"), dec("0"));
        assert!(dec("0.1") < dec("0.10000000000000000001"));
        assert!(dec("-2") < dec("-1.5"));
        assert!(dec("99.999") < dec("100"));
        for bad in ["NaN", "Infinity", "1.2.3", "", "-", "1e", "0x10"] {
            assert_eq!(Dec::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_parse_only_when_unambiguous() {
        let t = |s| timestamp(s, false);
        assert_eq!(t("1970-01-01"), Some(0));
        assert_eq!(t("1970-01-01 00:00:01.5"), Some(1_500_000));
        assert_eq!(t("2026-01-05T14:30:00"), t("2026-01-05 14:30"));
        assert_eq!(
            t("2026-01-05 14:30+00"),
            None,
            "an offset a timestamp would ignore"
        );
        assert_eq!(
            timestamp("2026-01-05 14:30", true),
            None,
            "no offset: the TimeZone decides"
        );
        assert_eq!(
            timestamp("2026-01-05 15:30+01", true),
            timestamp("2026-01-05 14:30:00Z", true)
        );
        for bad in [
            "2026-02-30",
            "2026-01-05 24:00",
            "now",
            "epoch",
            "2026-1-5",
            "infinity",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
        assert_eq!(date("2000-01-01"), Some(10_957));
    }

    #[test]
    fn binary_parameters_decode_by_their_type() {
        let five = Some(Val::Num(dec("5")));
        assert_eq!(
            decode(&5i32.to_be_bytes(), 1, 0, Ty::Int(23), Ty::Int(23)),
            five
        );
        assert_eq!(
            decode(&5i64.to_be_bytes(), 1, 20, Ty::Int(23), Ty::Int(23)),
            five
        );
        assert_eq!(
            decode(&5i64.to_be_bytes(), 1, 0, Ty::Int(23), Ty::Int(23)),
            None,
            "not an int4"
        );
        // 12.5: ndigits 2, weight 0, sign 0, dscale 1, digits 12 and 5000.
        let n = [0, 2, 0, 0, 0, 0, 0, 1, 0, 12, 0x13, 0x88];
        assert_eq!(
            decode(&n, 1, 0, Ty::Numeric, Ty::Numeric),
            Some(Val::Num(dec("12.5")))
        );
        let nan = [0, 0, 0, 0, 0xC0, 0, 0, 0];
        assert_eq!(decode(&nan, 1, 0, Ty::Numeric, Ty::Numeric), None);
        assert_eq!(
            decode(b"DXY", 1, 0, Ty::Text(25), Ty::Text(25)),
            Some(Val::Text("DXY".into()))
        );
        assert_eq!(
            decode(&[1], 1, 0, Ty::Bool, Ty::Bool),
            Some(Val::Bool(true))
        );
        assert_eq!(
            decode(&0i64.to_be_bytes(), 1, 0, Ty::TimestampTz, Ty::TimestampTz),
            Some(Val::Time(10_957 * DAY))
        );
        assert_eq!(
            decode(&5f64.to_be_bytes(), 1, 701, Ty::Numeric, Ty::Numeric),
            None,
            "a float8"
        );
        assert_eq!(decode(b"5", 0, 0, Ty::Int(20), Ty::Int(20)), five);
    }
}
