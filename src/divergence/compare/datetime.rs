//! Dates and timestamps as day and microsecond counts from 2000-01-01, PostgreSQL's own epoch and
//! its binary format, so a text `2000-01-01 01:00:00+01` equals a binary 0. Text is read and
//! written in the ISO DateStyle, the one pgbridge pins on both sides before comparing.

use crate::calendar::{civil_from_days, PG_EPOCH_DAYS};

/// Days since 2000-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    crate::calendar::days_from_civil(y, m, d) - PG_EPOCH_DAYS
}

/// The date of a day number (days since 2000-01-01), as `YYYY-MM-DD`.
pub(super) fn date_text(days: i64) -> String {
    let (year, month, day) = civil_from_days(days + PG_EPOCH_DAYS);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Microseconds since 2000-01-01 as `YYYY-MM-DD HH:MM:SS[.ffffff]+00`.
pub(super) fn timestamp_text(us: i64) -> String {
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

/// A date column's text: a day number, with `infinity` and `-infinity` at the ends the binary
/// format gives them.
pub(super) fn date_value(t: &str) -> Option<i64> {
    match t {
        "infinity" => Some(i32::MAX.into()),
        "-infinity" => Some(i32::MIN.into()),
        t => parse_date(t),
    }
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
pub(super) fn parse_timestamp(t: &str) -> Option<i64> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_epoch_is_2000_and_infinity_is_the_binary_extreme() {
        assert_eq!(parse_date("2000-01-01"), Some(0));
        assert_eq!(parse_timestamp("2000-01-01 00:00:00"), Some(0));
        assert_eq!(date_value("infinity"), Some(i32::MAX.into()));
        assert_eq!(date_value("-infinity"), Some(i32::MIN.into()));
        assert_eq!(
            timestamp_text(parse_timestamp("-infinity").unwrap()),
            "-infinity"
        );
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_timestamp("2026-01-05 14:30:00.1234567+00"), None);
    }
}
