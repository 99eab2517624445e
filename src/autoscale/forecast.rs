//! Predictive pre-scaling from recorded history: the arrival rate expected a
//! little ahead, read from the same minutes yesterday and last week.
//!
//! Pure. [`Minutes`] folds the per-second samples into one record per
//! minute (keyed by minute number: Unix minutes live, minutes since the
//! start in the simulator); `history_file.rs` keeps them on disk so they
//! survive restarts. The caller turns the forecast into a floor for the
//! policy: a forecast can only raise the pool, never shrink it.

use std::collections::BTreeMap;

use super::signal::Sample;

/// Minutes in a day and a week.
pub(crate) const DAY: u64 = 24 * 60;
pub(crate) const WEEK: u64 = 7 * DAY;
/// Minutes kept: a week back from yesterday's minute ahead.
pub(crate) const KEPT: u64 = WEEK + DAY;

/// One recorded minute of a pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Minute {
    pub(crate) minute: u64,
    /// Mean arrivals per second over the seconds recorded in the minute.
    pub(crate) rate: f64,
    /// Highest in flight + queued seen in the minute.
    pub(crate) peak_concurrency: f64,
    /// Highest queue depth seen in the minute.
    pub(crate) peak_queued: f64,
    /// Highest per-second mean queue wait in the minute, seconds.
    pub(crate) peak_queue_wait: f64,
}

/// The minute being filled.
#[derive(Debug, Clone, Copy)]
struct Open {
    minute: u64,
    arrivals: f64,
    seconds: u32,
    peak_concurrency: f64,
    peak_queued: f64,
    peak_queue_wait: f64,
}

/// Recorded minutes, the last [`KEPT`] of them, plus the one being filled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Minutes {
    recorded: BTreeMap<u64, Minute>,
    open: Option<Open>,
}

impl Minutes {
    /// Adds one second (at `second`, counted like the minute numbers x 60).
    /// Returns the minute this second closed, if it started a new one.
    pub(crate) fn add_second(&mut self, second: u64, s: &Sample) -> Option<Minute> {
        let minute = second / 60;
        let closed = match self.open {
            Some(o) if o.minute == minute => None,
            Some(o) => {
                let m = Minute {
                    minute: o.minute,
                    rate: o.arrivals / f64::from(o.seconds.max(1)),
                    peak_concurrency: o.peak_concurrency,
                    peak_queued: o.peak_queued,
                    peak_queue_wait: o.peak_queue_wait,
                };
                self.insert(m);
                self.open = None;
                Some(m)
            }
            None => None,
        };
        let o = self.open.get_or_insert(Open {
            minute,
            arrivals: 0.0,
            seconds: 0,
            peak_concurrency: 0.0,
            peak_queued: 0.0,
            peak_queue_wait: 0.0,
        });
        o.arrivals += s.arrivals;
        o.seconds += 1;
        o.peak_concurrency = o.peak_concurrency.max(s.concurrency);
        o.peak_queued = o.peak_queued.max(s.queued);
        o.peak_queue_wait = o.peak_queue_wait.max(s.queue_wait);
        closed
    }

    /// Records a whole minute (read back from the file), dropping any older
    /// than [`KEPT`] before the newest.
    pub(crate) fn insert(&mut self, m: Minute) {
        self.recorded.insert(m.minute, m);
        let newest = self.recorded.keys().next_back().copied().unwrap_or(0);
        let oldest_kept = newest.saturating_sub(KEPT);
        while self.recorded.first_key_value().is_some_and(|(k, _)| *k < oldest_kept) {
            self.recorded.pop_first();
        }
    }

    pub(crate) fn rate(&self, minute: u64) -> Option<f64> {
        self.recorded.get(&minute).map(|m| m.rate)
    }

    pub(crate) fn len(&self) -> usize {
        self.recorded.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Minute> {
        self.recorded.values()
    }
}

/// Minutes to look ahead so capacity asked for now is ready in time: the
/// provisioning delay plus two minutes of margin.
pub(crate) fn lookahead(provisioning_delay_secs: f64) -> u64 {
    ((provisioning_delay_secs.max(0.0) + 120.0) / 60.0).ceil() as u64
}

/// The highest rate recorded at the same time of day yesterday or at the
/// same time last week, over the minutes `now + 1 ..= now + ahead`. `None`
/// when neither day is recorded.
pub(crate) fn expected_rate(rate_at: impl Fn(u64) -> Option<f64>, now: u64, ahead: u64) -> Option<f64> {
    let mut best: Option<f64> = None;
    for m in now + 1..=now + ahead {
        for back in [DAY, WEEK] {
            if let Some(v) = m.checked_sub(back).and_then(&rate_at) {
                best = Some(best.map_or(v, |b: f64| b.max(v)));
            }
        }
    }
    best
}

/// How well the same minutes yesterday and last week have predicted the
/// last `window` minutes before `now`: the mean relative error of that
/// prediction (`None` with fewer than 10 minutes to judge by). The policy
/// trusts the forecast only while this is small: a day unlike yesterday
/// does not pay for yesterday's peak.
pub(crate) fn track_record(rate_at: impl Fn(u64) -> Option<f64>, now: u64, window: u64) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0u32);
    for m in now.saturating_sub(window)..now {
        let Some(actual) = rate_at(m) else { continue };
        let said = [DAY, WEEK]
            .iter()
            .filter_map(|&back| m.checked_sub(back).and_then(&rate_at))
            .fold(None, |best: Option<f64>, v| Some(best.map_or(v, |b| b.max(v))));
        if let Some(said) = said {
            sum += (said - actual).abs() / said.max(actual).max(1.0);
            n += 1;
        }
    }
    (n >= 10).then(|| sum / f64::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_yesterday_and_last_week_ahead_of_now() {
        let mut history = vec![10.0; (WEEK + DAY) as usize];
        history[(WEEK + 600 - DAY) as usize] = 500.0; // yesterday at 10:00
        history[600] = 900.0; // last week at 10:00
        fn at(h: &[f64]) -> impl Fn(u64) -> Option<f64> + '_ {
            move |m| h.get(m as usize).copied()
        }
        // At 09:58 of day 8, looking 3 minutes ahead, 10:00 is in view.
        assert_eq!(expected_rate(at(&history), WEEK + 598, 3), Some(900.0));
        assert_eq!(expected_rate(at(&history), WEEK + 590, 3), Some(10.0));
        assert_eq!(expected_rate(at(&history[..100]), 50, 3), None, "no day recorded yet");
    }

    fn second(t: u64, arrivals: f64, concurrency: f64, queued: f64) -> Sample {
        Sample {
            t,
            arrivals,
            completed: arrivals,
            concurrency,
            queued,
            queue_wait: queued / 100.0,
            class_wait: [0.0, queued / 100.0, 0.0],
            service_cv2: None,
        }
    }

    #[test]
    fn seconds_fold_into_minutes() {
        let mut m = Minutes::default();
        for s in 120..180 {
            let arrivals = if s < 150 { 10.0 } else { 30.0 };
            assert_eq!(m.add_second(s, &second(s, arrivals, 5.0, 0.0)), None);
        }
        let closed = m.add_second(180, &second(180, 1.0, 7.0, 2.0)).expect("minute 2 closed");
        assert_eq!(closed.minute, 2);
        assert_eq!(closed.rate, 20.0);
        assert_eq!(closed.peak_concurrency, 5.0);
        assert_eq!(m.rate(2), Some(20.0));
        assert_eq!(m.rate(3), None, "still open");
        // A gap (the process was down) closes the open minute over the
        // seconds it saw.
        let closed = m.add_second(600, &second(600, 0.0, 0.0, 0.0)).unwrap();
        assert_eq!((closed.minute, closed.rate, closed.peak_queued), (3, 1.0, 2.0));
        assert_eq!(closed.peak_queue_wait, 0.02);
    }

    #[test]
    fn keeps_eight_days() {
        let mut m = Minutes::default();
        for minute in 0..KEPT + 100 {
            m.insert(Minute {
                minute,
                rate: 1.0,
                peak_concurrency: 0.0,
                peak_queued: 0.0,
                peak_queue_wait: 0.0,
            });
        }
        assert_eq!(m.len() as u64, KEPT + 1);
        assert_eq!(m.rate(98), None);
        assert_eq!(m.rate(99), Some(1.0));
    }

    #[test]
    fn the_track_record_says_how_well_yesterday_predicted_today() {
        let same = |_: u64| Some(100.0);
        assert_eq!(track_record(same, DAY + 120, 60), Some(0.0));
        let doubled = |m: u64| Some(if m >= DAY { 200.0 } else { 100.0 });
        assert_eq!(track_record(doubled, DAY + 120, 60), Some(0.5));
        assert_eq!(track_record(|_| None, DAY + 120, 60), None);
    }
}
