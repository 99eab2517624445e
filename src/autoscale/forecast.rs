//! Predictive pre-scaling from recorded history: the arrival rate expected a
//! little ahead, read from the same minutes yesterday and last week.
//!
//! Pure. The caller keeps one mean arrival rate per minute (the live loop in
//! a file under the state directory, the simulator in memory) and turns the
//! forecast into a floor for the policy: a forecast can only raise the pool,
//! never shrink it.

/// Minutes in a day and a week.
pub const DAY: usize = 24 * 60;
pub const WEEK: usize = 7 * DAY;

/// The highest rate recorded at the same time of day yesterday or at the
/// same time last week, over the minutes `now + 1 ..= now + ahead`. `None`
/// when neither day is recorded.
pub fn expected_rate(per_minute: &[f64], now: usize, ahead: usize) -> Option<f64> {
    let mut best: Option<f64> = None;
    for m in now + 1..=now + ahead {
        for back in [DAY, WEEK] {
            if let Some(v) = m.checked_sub(back).and_then(|i| per_minute.get(i)) {
                best = Some(best.map_or(*v, |b: f64| b.max(*v)));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_yesterday_and_last_week_ahead_of_now() {
        let mut history = vec![10.0; WEEK + DAY];
        history[WEEK + 600 - DAY] = 500.0; // yesterday at 10:00
        history[600] = 900.0; // last week at 10:00
                              // At 09:58 of day 8, looking 3 minutes ahead, 10:00 is in view.
        assert_eq!(expected_rate(&history, WEEK + 598, 3), Some(900.0));
        assert_eq!(expected_rate(&history, WEEK + 590, 3), Some(10.0));
        assert_eq!(expected_rate(&history[..100], 50, 3), None, "no day recorded yet");
    }
}
