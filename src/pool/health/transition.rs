//! The pure decisions of health checking: no clock, no I/O, plain values in
//! and out, so every rule is unit-tested on its own.

use std::time::Duration;

/// Consecutive probe results, as kept per backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Streak {
    pub(crate) passes: u32,
    pub(crate) failures: u32,
}

/// After one active probe: the new streak, and `Some(up)` when the backend
/// crosses a threshold (up after `healthy` passes in a row while down,
/// down after `unhealthy` failures in a row while up).
pub(crate) fn after_probe(
    up: bool,
    streak: Streak,
    passed: bool,
    healthy: u32,
    unhealthy: u32,
) -> (Streak, Option<bool>) {
    let next = if passed {
        Streak {
            passes: streak.passes.saturating_add(1),
            failures: 0,
        }
    } else {
        Streak {
            passes: 0,
            failures: streak.failures.saturating_add(1),
        }
    };
    let change = match (up, passed) {
        (false, true) if next.passes >= healthy => Some(true),
        (true, false) if next.failures >= unhealthy => Some(false),
        _ => None,
    };
    (next, change)
}

/// How long the `n`-th ejection (1-based) of a backend lasts: the base
/// period doubling each time, capped.
pub(crate) fn ejection_period(n: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// Whether one more backend of `total` may be ejected while `ejected`
/// already are, under a cap of `max_percent` of the pool.
pub(crate) fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    total > 0 && (ejected + 1) * 100 <= total * max_percent as usize
}

/// Slow start: the share (per mille) of its configured weight and limit a
/// backend gets `elapsed` after coming up, from 10 % to 100 % over `window`.
pub(crate) fn ramp_permille(elapsed: Duration, window: Duration) -> u32 {
    if window.is_zero() || elapsed >= window {
        return 1000;
    }
    let f = elapsed.as_secs_f64() / window.as_secs_f64();
    (100.0 + 900.0 * f) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_take_a_backend_down_and_up() {
        let (mut s, mut up) = (Streak::default(), true);
        for (i, passed) in [false, false, true, false, false, false].into_iter().enumerate() {
            let (n, change) = after_probe(up, s, passed, 2, 3);
            s = n;
            if let Some(c) = change {
                up = c;
                assert_eq!(i, 5, "down only after three failures in a row");
            }
        }
        assert!(!up);
        let (s, c) = after_probe(up, s, true, 2, 3);
        assert_eq!(c, None);
        let (_, c) = after_probe(up, s, true, 2, 3);
        assert_eq!(c, Some(true));
    }

    #[test]
    fn ejections_double_and_cap() {
        let (b, m) = (Duration::from_secs(10), Duration::from_secs(60));
        let periods: Vec<u64> = (1..=5).map(|n| ejection_period(n, b, m).as_secs()).collect();
        assert_eq!(periods, vec![10, 20, 40, 60, 60]);
        assert_eq!(ejection_period(1000, b, m), m);
    }

    #[test]
    fn the_ejection_cap_is_a_share_of_the_pool() {
        assert!(may_eject(0, 4, 50));
        assert!(may_eject(1, 4, 50));
        assert!(!may_eject(2, 4, 50));
        assert!(!may_eject(0, 1, 50), "never eject the only backend at 50 %");
        assert!(may_eject(0, 1, 100));
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_all() {
        let w = Duration::from_secs(30);
        assert_eq!(ramp_permille(Duration::ZERO, w), 100);
        assert_eq!(ramp_permille(Duration::from_secs(15), w), 550);
        assert_eq!(ramp_permille(Duration::from_secs(30), w), 1000);
        assert_eq!(ramp_permille(Duration::from_secs(1), Duration::ZERO), 1000);
    }
}
