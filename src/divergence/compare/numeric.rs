//! NUMERIC compared by value: `1.50` equals `1.5`. rust_decimal holds about 28 digits, so a wider
//! value (or NaN, Infinity) is compared as normalized text instead; the binary format is turned
//! into that same text first.

use std::str::FromStr;

use rust_decimal::Decimal;

use super::value::Canon;

/// A NUMERIC's text as a value: a [`Decimal`] when it fits, normalized text when not.
pub(super) fn numeric_text(t: &str) -> Canon {
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
pub(super) fn numeric_binary_to_text(b: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i64;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    let negative = match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 => false,
        0x4000 => true,
        _ => return None,
    };
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Option<_>>()?;
    let (int, frac) = digit_groups(&digits, weight);
    let mut s = String::new();
    if negative {
        s.push('-');
    }
    s.push_str(if int.is_empty() { "0" } else { &int });
    if dscale > 0 || !frac.is_empty() {
        s.push('.');
        s.push_str(&frac);
    }
    Some(normalize_numeric(&s))
}

/// The base-10000 digits as the decimal digits before and after the point, four to a digit,
/// with the zero groups `weight` puts between them and the point.
fn digit_groups(digits: &[u16], weight: i64) -> (String, String) {
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
    let last_pos = weight - digits.len() as i64 + 1;
    if last_pos > 0 {
        for _ in 0..last_pos {
            int.push_str("0000");
        }
    }
    if weight < -1 {
        frac = "0000".repeat((-weight - 1) as usize) + &frac;
    }
    (int, frac)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::rs;
    use super::super::value::NUMERIC;
    use super::super::{compare, CompareOptions};
    use super::*;

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
    fn text_is_normalized_and_special_values_kept() {
        assert_eq!(normalize_numeric("-007.500"), "-7.5");
        assert_eq!(normalize_numeric("+0.0"), "0");
        assert_eq!(normalize_numeric("NaN"), "NaN");
        // NaN and a sign word that is not one: the special text, or not a numeric.
        assert_eq!(
            numeric_binary_to_text(&[0, 0, 0, 0, 0xC0, 0, 0, 0]).unwrap(),
            "NaN"
        );
        assert_eq!(numeric_binary_to_text(&[0, 0, 0, 0, 0x12, 0, 0, 0]), None);
        assert_eq!(
            numeric_binary_to_text(&[0, 2, 0, 0, 0, 0, 0, 0, 0, 1]),
            None
        );
    }
}
