//! The flash-sale calendar of an elastic pool: `[[pools.X.autoscale.schedule]]`
//! entries, parsed.
//!
//! Leaf (part of `config/`). A time is a UTC instant
//! (`2026-11-27T20:00:00Z`) or a daily time (`20:00`); the floor they put
//! under the pool is computed by `autoscale/schedule.rs`.

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// When an entry starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Unix seconds (from `2026-11-27T20:00:00Z`).
    At(i64),
    /// Seconds after midnight UTC, every day (from `20:00`).
    Daily(i64),
}

/// One `[[pools.X.autoscale.schedule]]` entry: at least `min` backends
/// from `start` to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// When the capacity must be there.
    pub start: When,
    /// When the entry ends.
    pub end: When,
    /// Backends the pool keeps at least while the entry is in force.
    pub min: u32,
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (UTC) or a daily `HH:MM`.
pub fn parse_when(text: &str) -> Result<When, String> {
    let bad = || format!("`{text}`: expected a UTC time such as \"2026-11-27T20:00:00Z\" or a daily \"20:00\"");
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    if let Some((h, m)) = text.split_once(':').filter(|_| text.len() <= 5) {
        let (h, m) = (num(h)?, num(m)?);
        if !(0..24).contains(&h) || !(0..60).contains(&m) {
            return Err(bad());
        }
        return Ok(When::Daily(h * 3600 + m * 60));
    }
    let t = text.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = t.split_once('T').ok_or_else(bad)?;
    let d: Vec<&str> = date.split('-').collect();
    let c: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || c.len() != 3 {
        return Err(bad());
    }
    let (y, mo, da) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (h, mi, s) = (num(c[0])?, num(c[1])?, num(c[2])?);
    if !(1..=12).contains(&mo)
        || !(1..=31).contains(&da)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..61).contains(&s)
    {
        return Err(bad());
    }
    Ok(When::At(days_from_civil(y, mo, da) * DAY + h * 3600 + mi * 60 + s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_times_and_daily_times() {
        assert_eq!(parse_when("1970-01-01T00:00:00Z"), Ok(When::At(0)));
        assert_eq!(parse_when("2026-11-27T20:00:00Z"), Ok(When::At(1_795_809_600)));
        assert_eq!(parse_when("20:00"), Ok(When::Daily(72_000)));
        for bad in ["2026-11-27T20:00:00", "25:00", "2026-13-01T00:00:00Z", "tomorrow"] {
            assert!(parse_when(bad).is_err(), "{bad}");
        }
    }
}
