//! Human units in the config file: durations ("250ms", "5s", "1m30s"),
//! byte sizes ("64KiB", "10MB", "1048576") and rates ("20/s", "600/m").
//!
//! Control path only. Parsing happens during deserialisation so that a bad
//! value is reported with the file position serde/toml already track.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as a human string: a sequence of `<number><unit>` with
/// units `ms`, `s`, `m`, `h` (e.g. `"1m30s"`, `"250ms"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// A byte count written as an integer or a string with a unit
/// (`B`, `KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// The longest duration any key accepts (ranges are checked later; this
/// only keeps arithmetic on durations from overflowing).
const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// Parses `"1m30s"`-style durations.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("expected a duration such as \"250ms\" or \"5s\", found an empty string".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{text}`: a number needs a unit (ms, s, m, h)"))?;
        if digits == 0 {
            return Err(format!("`{text}`: expected a number before the unit"));
        }
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: `{}` is not a number", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("`{text}`: unknown unit `{other}`, expected ms, s, m or h")),
        };
        rest = &rest[unit_len..];
        total = Duration::try_from_secs_f64(value * scale)
            .ok()
            .and_then(|d| total.checked_add(d))
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(|| format!("`{text}`: longer than a year"))?;
    }
    Ok(total)
}

/// Parses `"64KiB"`-style sizes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let number: u64 = s[..split]
        .parse()
        .map_err(|_| format!("`{text}`: expected a size such as \"64KiB\" or \"10MB\""))?;
    let scale: u64 = match s[split..].trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}`, expected B, KB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    number.checked_mul(scale).ok_or_else(|| format!("`{text}`: too large"))
}

/// A request rate written as `"<count>/<unit>"` with unit `s`, `m` or `h`
/// (`"20/s"`, `"600/m"`): `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period (at least 1).
    pub count: u64,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// The time one request "costs": the period divided by the count, in
    /// nanoseconds (at least 1).
    pub fn interval_ns(&self) -> u64 {
        (self.per.as_nanos() / u128::from(self.count.max(1))).clamp(1, u128::from(u64::MAX)) as u64
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            3600 => "h",
            60 => "m",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Parses `"20/s"`-style rates (`s`, `m`, `h`; the count is an integer
/// of at least 1).
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let expected = || format!("`{text}`: expected a rate such as \"20/s\" or \"600/m\"");
    let (count, unit) = text.trim().split_once('/').ok_or_else(expected)?;
    let count: u64 = count.trim().parse().map_err(|_| expected())?;
    if count == 0 {
        return Err(format!(
            "`{text}`: a rate of zero would refuse everything; remove the rule instead"
        ));
    }
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        other => return Err(format!("`{text}`: unknown unit `{other}`, expected s, m or h")),
    };
    Ok(Rate { count, per })
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate string such as \"20/s\" or \"600/m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
                parse_rate(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\" or \"5s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte size: an integer or a string such as \"10MB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_compound_and_fractional_forms() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn durations_reject_missing_or_unknown_units() {
        assert!(parse_duration("5").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit `x`"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999h")
            .unwrap_err()
            .contains("longer than a year"));
        assert!(parse_duration("1e308s").is_err(), "no panic on overflow");
    }

    #[test]
    fn rates_name_a_count_per_second_minute_or_hour() {
        let r = parse_rate("20/s").unwrap();
        assert_eq!((r.count, r.per), (20, Duration::from_secs(1)));
        assert_eq!(r.interval_ns(), 50_000_000);
        assert_eq!(parse_rate(" 600 / m ").unwrap().interval_ns(), 100_000_000);
        assert_eq!(parse_rate("1/h").unwrap().to_string(), "1/h");
        assert!(parse_rate("0/s").unwrap_err().contains("zero"));
        assert!(parse_rate("20/d").unwrap_err().contains("unknown unit `d`"));
        assert!(parse_rate("20").is_err());
        assert!(parse_rate("x/s").is_err());
    }

    #[test]
    fn sizes_accept_decimal_and_binary_units() {
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("12"), Ok(12));
        assert!(parse_size("12 parsecs").is_err());
    }
}
