//! Predictive pre-scaling from recorded history: the arrival rate expected a
//! little ahead, read from the same minutes yesterday and last week.
//!
//! Pure. [`Minutes`] folds the per-second samples into one record per
//! minute (keyed by minute number: Unix minutes live, minutes since the
//! start in the simulator); `history_file.rs` keeps them on disk so they
//! survive restarts. The caller turns the forecast into a floor for the
//! policy: a forecast can only raise the pool, never shrink it.

use std::collections::{BTreeMap, VecDeque};

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
    (now + 1..=now + ahead)
        .filter_map(|m| said_at(&rate_at, m))
        .reduce(f64::max)
}

/// What history said of minute `m`: the higher of the same minute
/// yesterday and last week (`None` when neither is recorded).
fn said_at(rate_at: &impl Fn(u64) -> Option<f64>, m: u64) -> Option<f64> {
    [DAY, WEEK]
        .iter()
        .filter_map(|&back| m.checked_sub(back).and_then(rate_at))
        .reduce(f64::max)
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
        if let Some(said) = said_at(&rate_at, m) {
            sum += (said - actual).abs() / said.max(actual).max(1.0);
            n += 1;
        }
    }
    (n >= 10).then(|| sum / f64::from(n))
}

/// A rise the history predicts counts as a peak when it is this much
/// above the rate that was live when it was read.
const PEAK_RISE: f64 = 0.2;
/// Minutes over which predicted peaks are judged.
const PEAK_WINDOW: u64 = WEEK;

/// How much of the peaks that history predicted over the last week came:
/// the rise delivered over the rise promised, summed over the minutes
/// where yesterday or last week stood [`PEAK_RISE`] above the rate live
/// `ahead` minutes earlier (the rate when the forecast raised the pool).
/// The mean error of [`track_record`] is made of ordinary minutes; this
/// judges the minutes the forecast is paid for: a shop whose peaks come at
/// random times keeps a good mean error and a poor peak record. Kept as
/// minutes close, so a step costs no walk over the week.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeakRecord {
    /// `(minute, promised, delivered)` of the predicted peaks in the window.
    peaks: VecDeque<(u64, f64, f64)>,
    /// Their running sums, `(promised, delivered)`.
    sums: (f64, f64),
}

impl PeakRecord {
    /// Judges the closed minute `m`.
    pub(crate) fn judge(&mut self, rate_at: impl Fn(u64) -> Option<f64>, m: u64, ahead: u64) {
        while let Some((_, promised, delivered)) = self.peaks.front().filter(|(t, ..)| t + PEAK_WINDOW <= m).copied() {
            self.peaks.pop_front();
            self.sums = (self.sums.0 - promised, self.sums.1 - delivered);
        }
        if self.peaks.is_empty() {
            self.sums = (0.0, 0.0); // no rounding left behind
        }
        let (Some(actual), Some(live)) = (rate_at(m), m.checked_sub(ahead).and_then(&rate_at)) else {
            return;
        };
        if let Some(said) = said_at(&rate_at, m).filter(|&s| s > live * (1.0 + PEAK_RISE) + 1.0) {
            let (promised, delivered) = (said - live, (actual.min(said) - live).max(0.0));
            self.peaks.push_back((m, promised, delivered));
            self.sums = (self.sums.0 + promised, self.sums.1 + delivered);
        }
    }

    /// Judges every recorded minute of the last week before `now` afresh.
    pub(crate) fn rebuild(&mut self, minutes: &Minutes, now: u64, ahead: u64) {
        *self = PeakRecord::default();
        for m in now.saturating_sub(PEAK_WINDOW)..now {
            self.judge(|m| minutes.rate(m), m, ahead);
        }
    }

    /// The share of the promised rise that came; `None` with no peak
    /// predicted in the week.
    pub(crate) fn hits(&self) -> Option<f64> {
        let (promised, delivered) = self.sums;
        (promised > 0.0).then(|| delivered / promised)
    }
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

    #[test]
    fn the_peak_record_says_whether_yesterdays_peaks_came_back() {
        // Yesterday at 10:00 a peak of 1,000 over a base of 100.
        let peak_at = |at: u64| move |m: u64| Some(if m == at { 1000.0 } else { 100.0 });
        let now = DAY + 700;
        let record = |rate_at: &dyn Fn(u64) -> Option<f64>| {
            let mut r = PeakRecord::default();
            (0..now).for_each(|m| r.judge(rate_at, m, 3));
            r.hits()
        };
        // It came back at the same minute today: every rise delivered.
        let daily = |m: u64| Some(if m % DAY == 600 { 1000.0 } else { 100.0 });
        assert_eq!(record(&daily), Some(1.0));
        // It did not: nothing delivered, though the mean error is small.
        assert_eq!(record(&peak_at(600)), Some(0.0));
        assert!(track_record(peak_at(600), now, 120).unwrap() < 0.1);
        // No peak predicted: nothing to judge.
        assert_eq!(record(&|_| Some(100.0)), None);
        // A week after the last minute that predicted it (last week's
        // 10:00), the miss has left the window.
        let mut r = PeakRecord::default();
        (0..2 * WEEK + 700).for_each(|m| r.judge(peak_at(600), m, 3));
        assert_eq!(r.hits(), None);
    }
}
