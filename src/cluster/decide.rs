//! The cluster's pure decisions: what role this instance plays now, and
//! the demand the leader sizes the pool for.
//!
//! Control path, but no tokio and no I/O: plain values in, plain values
//! out, so the rules are tested on their own. Invariants:
//! - only a leader whose lease was renewed less than half a TTL ago may
//!   act (call hooks, write membership): its lease cannot have expired, so
//!   no other instance can be leader at the same time;
//! - without etcd nobody acts: the role is `Paused`;
//! - the demand sized for is the sum over live instances, never one
//!   instance's share multiplied.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What this instance does this second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Decides on the summed demand, calls hooks, writes membership.
    Leader {
        /// The leader key's create revision: the fencing token hooks see.
        epoch: u64,
    },
    /// Applies the membership the leader wrote; never calls a hook.
    Follower,
    /// etcd is unreachable, or a leader's lease is not fresh enough: keep
    /// serving the last membership, decide nothing.
    Paused,
}

impl Role {
    /// The leadership's epoch, when this instance leads.
    pub(crate) fn epoch(self) -> Option<u64> {
        match self {
            Role::Leader { epoch } => Some(epoch),
            Role::Follower | Role::Paused => None,
        }
    }
}

impl Role {
    /// `leader`, `follower` or `paused` (for `/stats` and the log).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Leader { .. } => "leader",
            Role::Follower => "follower",
            Role::Paused => "paused",
        }
    }
}

/// The role, from what the coordinator knows: whether etcd answered its
/// last round, the epoch of the leadership it holds (if any), and how long
/// ago its lease was last renewed.
pub(crate) fn role(etcd_up: bool, held_epoch: Option<u64>, since_renewal: Option<Duration>, lease: Duration) -> Role {
    let fresh = since_renewal.is_some_and(|s| s < lease / 2);
    match (etcd_up, held_epoch) {
        (_, Some(epoch)) if fresh => Role::Leader { epoch },
        (true, None) if fresh => Role::Follower,
        _ => Role::Paused,
    }
}

/// One instance's demand on one pool over its last second: what it writes
/// to `{prefix}/demand/{pool}/{instance}`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct Demand {
    /// When it was measured, Unix milliseconds.
    pub(crate) at_unix_ms: u64,
    /// Requests that arrived (per second).
    pub(crate) arrivals: f64,
    /// Requests completed (per second).
    pub(crate) completions: f64,
    /// Requests in flight on backends.
    pub(crate) in_flight: f64,
    /// Requests waiting in the queue.
    pub(crate) queued: f64,
    /// Mean time the second's dequeued requests waited, seconds.
    pub(crate) queue_wait_s: f64,
    /// The same per priority class (critical, normal, sheddable); absent
    /// from an older instance's demand.
    #[serde(default)]
    pub(crate) class_wait_s: [f64; 3],
    /// Squared coefficient of variation of response times, when measured.
    pub(crate) service_cv2: Option<f64>,
}

/// The cluster's demand on a pool: this instance's own plus every other
/// instance's that is younger than `max_age_ms` at `now_ms` (a dead
/// instance's key lives until its lease expires; a stale one is not
/// counted twice as long). Rates and counts add; the queue wait is
/// weighted by arrivals, the variation by completions.
pub(crate) fn sum(own: &Demand, others: &[Demand], now_ms: u64, max_age_ms: u64) -> Demand {
    let live = std::iter::once(own).chain(
        others
            .iter()
            .filter(|d| now_ms.saturating_sub(d.at_unix_ms) <= max_age_ms),
    );
    let mut total = Demand {
        at_unix_ms: own.at_unix_ms,
        ..Demand::default()
    };
    let (mut wait_weight, mut wait_sum, mut wait_max) = (0.0, 0.0, 0.0f64);
    let (mut class_sum, mut class_max) = ([0.0; 3], [0.0f64; 3]);
    let (mut cv_weight, mut cv_sum) = (0.0, 0.0);
    for d in live {
        total.arrivals += d.arrivals;
        total.completions += d.completions;
        total.in_flight += d.in_flight;
        total.queued += d.queued;
        wait_weight += d.arrivals;
        wait_sum += d.arrivals * d.queue_wait_s;
        wait_max = wait_max.max(d.queue_wait_s);
        for k in 0..3 {
            class_sum[k] += d.arrivals * d.class_wait_s[k];
            class_max[k] = class_max[k].max(d.class_wait_s[k]);
        }
        if let Some(cv2) = d.service_cv2 {
            cv_weight += d.completions;
            cv_sum += d.completions * cv2;
        }
    }
    let weighted = |sum: f64, max: f64| if wait_weight > 0.0 { sum / wait_weight } else { max };
    total.queue_wait_s = weighted(wait_sum, wait_max);
    total.class_wait_s = std::array::from_fn(|k| weighted(class_sum[k], class_max[k]));
    total.service_cv2 = (cv_weight > 0.0).then(|| cv_sum / cv_weight);
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(5);

    #[test]
    fn a_leader_acts_only_while_its_lease_was_renewed_within_half_a_ttl() {
        let renewed = |s: u64| Some(Duration::from_millis(s));
        assert_eq!(role(true, Some(7), renewed(1000), LEASE), Role::Leader { epoch: 7 });
        assert_eq!(role(true, Some(7), renewed(2499), LEASE), Role::Leader { epoch: 7 });
        assert_eq!(role(true, Some(7), renewed(2500), LEASE), Role::Paused);
        // etcd just failed once: still inside the safe half of the lease.
        assert_eq!(role(false, Some(7), renewed(1000), LEASE), Role::Leader { epoch: 7 });
        assert_eq!(role(true, Some(7), None, LEASE), Role::Paused);
    }

    #[test]
    fn without_etcd_nobody_acts() {
        assert_eq!(role(false, None, Some(Duration::ZERO), LEASE), Role::Paused);
        assert_eq!(role(true, None, Some(Duration::ZERO), LEASE), Role::Follower);
        assert_eq!(role(true, None, None, LEASE), Role::Paused);
    }

    fn d(at: u64, arrivals: f64, in_flight: f64, queued: f64, wait: f64) -> Demand {
        Demand {
            at_unix_ms: at,
            arrivals,
            completions: arrivals,
            in_flight,
            queued,
            queue_wait_s: wait,
            class_wait_s: [0.0, wait, 0.0],
            service_cv2: Some(1.0),
        }
    }

    #[test]
    fn the_sum_adds_every_live_instance_once_and_skips_stale_ones() {
        let own = d(10_000, 10.0, 2.0, 1.0, 0.1);
        let others = [d(9_500, 30.0, 4.0, 3.0, 0.3), d(1_000, 1000.0, 99.0, 99.0, 9.0)];
        let s = sum(&own, &others, 10_000, 3_000);
        assert_eq!((s.arrivals, s.in_flight, s.queued), (40.0, 6.0, 4.0));
        assert!((s.queue_wait_s - 0.25).abs() < 1e-9, "{s:?}");
        assert_eq!(s.service_cv2, Some(1.0));
        // Alone, the sum is the instance's own demand.
        assert_eq!(sum(&own, &[], 10_000, 3_000).arrivals, own.arrivals);
    }

    #[test]
    fn with_no_arrivals_the_wait_is_the_largest_reported() {
        let s = sum(&d(0, 0.0, 0.0, 5.0, 0.2), &[d(0, 0.0, 0.0, 5.0, 0.7)], 0, 3_000);
        assert_eq!(s.queue_wait_s, 0.7);
    }
}
