//! The operator's guards on the policy's wish: control path, pure.
//!
//! `min`, `max` and the scheduled floor bound the size itself (in
//! `policy.rs`, so every policy honours them); these bound the change: at
//! most `max_step_up` / `max_step_down` backends per decision, and no
//! further scale-up within `cooldown_up` of the last one, no scale-down
//! within `cooldown_down` of the last change of either kind. Time is
//! passed in (seconds). The limits themselves are config
//! ([`Guards`]).

use crate::config::Guards;

/// When the size last went up and last changed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GuardState {
    last_up: Option<u64>,
    last_change: Option<u64>,
}

/// The size to ask for when the policy wants `wanted` and the last size
/// asked for is `previous`, and why it differs when it does.
pub(crate) fn guard(g: &Guards, st: &mut GuardState, now: u64, previous: u32, wanted: u32) -> (u32, Option<String>) {
    let within = |since: Option<u64>, secs: u64| since.is_some_and(|t| now < t + secs);
    let (size, why) = if wanted > previous {
        if within(st.last_up, g.cooldown_up) {
            (previous, Some(format!("held by cooldown_up ({} s)", g.cooldown_up)))
        } else {
            match g.max_step_up {
                Some(step) if wanted - previous > step => (previous + step, Some(format!("max_step_up {step}"))),
                _ => (wanted, None),
            }
        }
    } else if wanted < previous {
        if within(st.last_change, g.cooldown_down) {
            (previous, Some(format!("held by cooldown_down ({} s)", g.cooldown_down)))
        } else {
            match g.max_step_down {
                Some(step) if previous - wanted > step => (previous - step, Some(format!("max_step_down {step}"))),
                _ => (wanted, None),
            }
        }
    } else {
        (wanted, None)
    };
    if size > previous {
        st.last_up = Some(now);
    }
    if size != previous {
        st.last_change = Some(now);
    }
    (size, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_guards_pass_the_wish_through() {
        let mut st = GuardState::default();
        assert_eq!(guard(&Guards::default(), &mut st, 0, 2, 40), (40, None));
        assert_eq!(guard(&Guards::default(), &mut st, 1, 40, 1), (1, None));
    }

    #[test]
    fn steps_are_limited_per_decision() {
        let g = Guards {
            max_step_up: Some(4),
            max_step_down: Some(1),
            ..Guards::default()
        };
        let mut st = GuardState::default();
        assert_eq!(guard(&g, &mut st, 0, 2, 20).0, 6);
        assert_eq!(guard(&g, &mut st, 1, 6, 20).0, 10);
        let (size, why) = guard(&g, &mut st, 2, 10, 3);
        assert_eq!(size, 9);
        assert_eq!(why.as_deref(), Some("max_step_down 1"));
    }

    #[test]
    fn cooldowns_hold_the_size() {
        let g = Guards {
            cooldown_up: 30,
            cooldown_down: 60,
            ..Guards::default()
        };
        let mut st = GuardState::default();
        assert_eq!(guard(&g, &mut st, 100, 2, 5).0, 5);
        assert_eq!(guard(&g, &mut st, 110, 5, 8).0, 5, "up again too soon");
        assert_eq!(guard(&g, &mut st, 130, 5, 8).0, 8);
        assert_eq!(guard(&g, &mut st, 150, 8, 3).0, 8, "down too soon after a change");
        assert_eq!(guard(&g, &mut st, 190, 8, 3).0, 3);
        assert_eq!(guard(&g, &mut st, 191, 3, 3), (3, None));
    }
}
