//! Scheduled capacity in force: control path, pure.
//!
//! The calendar itself (`[[pools.X.autoscale.schedule]]`) is parsed by
//! `config/schedule.rs`; this turns it into a floor for the policy. Time is
//! passed in as Unix seconds (UTC). An entry is in force from `lead` before
//! its start (the provisioning delay plus five minutes, so the capacity is
//! ready before the sale) until its end. Daily entries repeat every day and
//! may wrap past midnight.

use crate::config::schedule::{Entry, When, DAY};

/// Whether `entry` is in force at `now`, counting `lead` seconds before its
/// start.
fn in_force(entry: &Entry, now: i64, lead: i64) -> bool {
    match (entry.start, entry.end) {
        (When::At(start), When::At(end)) => now >= start - lead && now < end,
        (When::Daily(start), When::Daily(end)) => {
            let from = (start - lead).rem_euclid(DAY);
            let t = now.rem_euclid(DAY);
            let end = end.rem_euclid(DAY);
            if from <= end {
                t >= from && t < end
            } else {
                t >= from || t < end // wraps past midnight
            }
        }
        _ => false, // refused by validation
    }
}

/// The highest `min` of the entries in force at `now` (0 when none).
pub(crate) fn floor(entries: &[Entry], now: i64, lead: i64) -> u32 {
    entries
        .iter()
        .filter(|e| in_force(e, now, lead))
        .map(|e| e.min)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_in_force_from_its_lead_until_its_end() {
        let sale = Entry {
            start: When::At(10_000),
            end: When::At(17_200),
            min: 12,
        };
        let lead = 330; // 30 s provisioning + 5 minutes
        assert_eq!(floor(&[sale], 10_000 - 331, lead), 0);
        assert_eq!(floor(&[sale], 10_000 - 330, lead), 12, "ready before the sale");
        assert_eq!(floor(&[sale], 17_199, lead), 12);
        assert_eq!(floor(&[sale], 17_200, lead), 0);
    }

    #[test]
    fn daily_entries_repeat_and_may_wrap_midnight() {
        let evening = Entry {
            start: When::Daily(20 * 3600),
            end: When::Daily(22 * 3600),
            min: 12,
        };
        let night = Entry {
            start: When::Daily(23 * 3600),
            end: When::Daily(3600),
            min: 4,
        };
        let day5 = 5 * DAY;
        assert_eq!(floor(&[evening, night], day5 + 21 * 3600, 0), 12);
        assert_eq!(floor(&[evening, night], day5 + 23 * 3600 + 60, 0), 4);
        assert_eq!(floor(&[evening, night], day5 + DAY + 1800, 0), 4, "after midnight");
        assert_eq!(floor(&[evening, night], day5 + 12 * 3600, 0), 0);
    }
}
