//! How long new members take to become ready: control path, pure.
//!
//! Each member the hook reports for the first time is timed from the start
//! of the call that asked for it until its health check passes. The
//! observed times teach the provisioning delay ([`DelayEstimate`]) that the
//! policy and the forecast use (the configured value is only the guess
//! before the first observation). A member still not ready after the
//! deadline is overdue:
//! the live loop reports it and asks the hook to replace it. On the way
//! down, [`Warmup::victims`] picks the members to drain: the ones not
//! serving yet, then the youngest (still in slow start, coldest caches), so
//! the warmed-up members stay.
//!
//! Time is passed in (seconds on any monotonic clock).

use std::collections::HashMap;
use std::net::SocketAddr;

/// Weight of a new observation in the learned delay.
const ALPHA: f64 = 0.3;

/// The provisioning delay to plan with: the configured guess until the
/// first observation, then an EWMA of observed warm-ups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DelayEstimate {
    configured: f64,
    learned: Option<f64>,
}

impl DelayEstimate {
    pub(crate) fn new(configured_delay: f64) -> DelayEstimate {
        DelayEstimate {
            configured: configured_delay,
            learned: None,
        }
    }

    /// Seconds.
    pub(crate) fn delay(&self) -> f64 {
        self.learned.unwrap_or(self.configured)
    }

    pub(crate) fn is_learned(&self) -> bool {
        self.learned.is_some()
    }

    /// One member took `observed` seconds from being asked for to ready.
    pub(crate) fn observe(&mut self, observed: f64) {
        let observed = observed.max(0.0);
        self.learned = Some(self.learned.map_or(observed, |l| l + ALPHA * (observed - l)));
    }
}

/// Warm-up times read from counts alone, for a caller that sees how many
/// members are ready and pending each second but not which ones (an
/// outside simulator driving `tidegate simulate --stdio`). Members are
/// matched first in, first out: the oldest pending member is the one that
/// became ready.
#[derive(Debug, Clone, Default)]
pub(crate) struct PendingCounts {
    /// When each pending member was first seen pending, oldest first.
    asked: std::collections::VecDeque<f64>,
    last: Option<(u32, u32)>,
}

impl PendingCounts {
    /// One second's counts; returns the warm-up times of the members that
    /// became ready since the last call.
    pub(crate) fn observe(&mut self, now: f64, ready: u32, pending: u32) -> Vec<f64> {
        let (ready_before, pending_before) = self.last.replace((ready, pending)).unwrap_or((ready, 0));
        let came_up = ready.saturating_sub(ready_before).min(pending_before);
        let joined = (pending + came_up).saturating_sub(pending_before);
        let mut observed = Vec::with_capacity(came_up as usize);
        for _ in 0..came_up {
            if let Some(asked) = self.asked.pop_front() {
                observed.push((now - asked).max(0.0));
            }
        }
        // Members that left pending without becoming ready (given up).
        while self.asked.len() as u32 > pending_before.saturating_sub(came_up) {
            self.asked.pop_back();
        }
        self.asked.extend(std::iter::repeat_n(now, joined as usize));
        observed
    }
}

/// The members asked for and not yet ready, and when each joined.
#[derive(Debug, Clone, Default)]
pub(crate) struct Warmup {
    /// Members reported and not ready yet: when they were asked for.
    pending: HashMap<SocketAddr, f64>,
    /// Every member reported: when it was first asked for.
    joined: HashMap<SocketAddr, f64>,
}

impl Warmup {
    /// The hook answered a call begun at `asked_at`; `new` are the members it
    /// reported for the first time.
    pub(crate) fn reported(&mut self, new: impl IntoIterator<Item = SocketAddr>, asked_at: f64) {
        for a in new {
            self.pending.entry(a).or_insert(asked_at);
            self.joined.entry(a).or_insert(asked_at);
        }
    }

    /// Forgets everything about members no longer in the pool (removed,
    /// draining, or given up on).
    pub(crate) fn retain(&mut self, members: &[SocketAddr]) {
        self.pending.retain(|a, _| members.contains(a));
        self.joined.retain(|a, _| members.contains(a));
    }

    /// The `n` members to drain first, from `(member, serving)`: those not
    /// serving, then the youngest; members of unknown age count as oldest.
    pub(crate) fn victims(&self, members: &[(SocketAddr, bool)], n: usize) -> Vec<SocketAddr> {
        let mut order: Vec<(bool, f64, SocketAddr)> = members
            .iter()
            .map(|(a, serving)| (*serving, -self.joined.get(a).copied().unwrap_or(f64::NEG_INFINITY), *a))
            .collect();
        order.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.total_cmp(&y.1)).then(x.2.cmp(&y.2)));
        order.into_iter().take(n).map(|(_, _, a)| a).collect()
    }

    /// A pending member passed its health check at `now`: the seconds it
    /// took since it was asked for (once per member).
    pub(crate) fn ready(&mut self, addr: SocketAddr, now: f64) -> Option<f64> {
        let asked = self.pending.remove(&addr)?;
        Some((now - asked).max(0.0))
    }

    pub(crate) fn pending(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.pending.keys().copied()
    }

    /// Members not ready `deadline` seconds after they were asked for.
    pub(crate) fn overdue(&self, now: f64, deadline: f64) -> Vec<SocketAddr> {
        let mut late: Vec<SocketAddr> = self
            .pending
            .iter()
            .filter(|(_, asked)| now - **asked > deadline)
            .map(|(a, _)| *a)
            .collect();
        late.sort();
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn learns_the_delay_from_observed_warm_ups() {
        let mut w = Warmup::default();
        let mut d = DelayEstimate::new(30.0);
        assert_eq!(d.delay(), 30.0, "the configured guess until something is observed");
        w.reported([addr(1), addr(2)], 100.0);
        d.observe(w.ready(addr(1), 108.0).unwrap());
        assert!(d.is_learned());
        assert_eq!(d.delay(), 8.0, "the first observation replaces the guess");
        d.observe(w.ready(addr(2), 118.0).unwrap());
        assert!((d.delay() - (8.0 + 0.3 * 10.0)).abs() < 1e-9);
        assert_eq!(w.ready(addr(2), 500.0), None, "a member is learned from once");
        // Reported again by a later answer: still timed from the first ask.
        w.reported([addr(3)], 200.0);
        w.reported([addr(3)], 205.0);
        assert_eq!(w.overdue(261.0, 60.0), vec![addr(3)]);
    }

    #[test]
    fn scale_in_drains_members_not_serving_then_the_youngest() {
        let mut w = Warmup::default();
        w.reported([addr(1), addr(2)], 0.0);
        w.reported([addr(3)], 100.0);
        w.reported([addr(4)], 200.0);
        let members = [
            (addr(9), true),
            (addr(1), true),
            (addr(3), true),
            (addr(4), false),
            (addr(2), true),
        ];
        assert_eq!(w.victims(&members, 1), vec![addr(4)], "not serving yet");
        assert_eq!(w.victims(&members, 2), vec![addr(4), addr(3)], "then the youngest");
        assert_eq!(
            w.victims(&members, 5).last(),
            Some(&addr(9)),
            "unknown age counts as oldest"
        );
        w.retain(&[addr(1)]);
        assert_eq!(
            w.victims(&[(addr(1), true), (addr(2), true)], 1),
            vec![addr(1)],
            "addr 2 forgotten"
        );
    }

    #[test]
    fn overdue_members_are_the_ones_past_the_deadline() {
        let mut w = Warmup::default();
        w.reported([addr(1)], 0.0);
        w.reported([addr(2)], 50.0);
        assert!(w.overdue(60.0, 60.0).is_empty());
        assert_eq!(w.overdue(61.0, 60.0), vec![addr(1)]);
        w.retain(&[addr(2)]);
        assert_eq!(w.overdue(200.0, 60.0), vec![addr(2)]);
        assert_eq!(w.ready(addr(1), 201.0), None, "a forgotten member teaches nothing");
    }

    #[test]
    fn warm_ups_are_read_from_counts_first_in_first_out() {
        let mut c = PendingCounts::default();
        assert!(c.observe(0.0, 1, 0).is_empty());
        assert!(c.observe(1.0, 1, 2).is_empty(), "two asked for at 1 s");
        assert!(c.observe(3.0, 1, 3).is_empty(), "one more at 3 s");
        assert_eq!(c.observe(6.0, 2, 2), vec![5.0], "the oldest came up");
        assert_eq!(c.observe(9.0, 4, 0), vec![8.0, 6.0]);
        // Scale-in lowers `ready`: nobody came up.
        assert!(c.observe(10.0, 2, 0).is_empty());
    }
}
