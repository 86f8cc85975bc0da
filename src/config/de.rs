//! Deserializers that check a value as they read it, so a value out of range is reported by the
//! TOML deserializer with the value's own span (`FILE:LINE:COL: key: message`) like a value of
//! the wrong type.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A number of seconds, 0 to one year, as a [`Duration`].
pub(super) fn de_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    if !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(serde::de::Error::custom(
            "expected a number of seconds between 0 and one year",
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A share between 0.0 and 1.0.
pub(super) fn de_share<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(serde::de::Error::custom(
            "expected a share between 0.0 and 1.0",
        ));
    }
    Ok(v)
}
