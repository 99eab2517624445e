//! Deciding the pool size: a pure function of the policy, its own state, the
//! signal history, the time and the pool's size. No tokio, no I/O, no clock:
//! the live loop and the simulator call the same code.
//!
//! Three policies, plus a fixed size for comparison:
//! - [`Policy::Tidegate`], the default (`tidegate.rs`): sizes for the load
//!   expected when new capacity can land (trend over the provisioning
//!   delay, headroom from its own recent forecast errors, Erlang C with the
//!   measured service variability), drains backlogs, scales in late and
//!   small.
//! - [`Policy::Kpa`]: Knative's KPA as documented (see `kpa`).
//! - [`Policy::Hpa`]: the Kubernetes HPA as documented (see `hpa`).

use std::collections::VecDeque;

use super::signal::History;
pub(crate) use super::tidegate::TidegateParams;
use super::tidegate::{self, TidegateState};

/// The pool as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PoolView {
    /// Healthy backends taking traffic.
    pub(crate) ready: u32,
    /// Asked for and not ready yet.
    pub(crate) provisioning: u32,
    /// `max_concurrency` of one backend.
    pub(crate) slots: u32,
    pub(crate) min: u32,
    pub(crate) max: u32,
    /// Scheduled capacity in force now: never go below it.
    pub(crate) floor: u32,
    /// The arrival rate recorded history expects within the lookahead
    /// (same minutes yesterday and last week); only the default policy
    /// reads it, and only to raise the pool.
    pub(crate) forecast_rate: Option<f64>,
    /// How wrong that history has lately been (mean relative error).
    pub(crate) forecast_error: Option<f64>,
    /// The share of its predicted peaks that came over the last week
    /// (`None`: it predicted none).
    pub(crate) forecast_peak_hits: Option<f64>,
    /// Seconds a new backend takes to become ready (learned from the hook).
    pub(crate) provisioning_delay: f64,
}

impl PoolView {
    pub(crate) fn current(&self) -> u32 {
        self.ready + self.provisioning
    }

    pub(crate) fn clamp(&self, n: u32) -> u32 {
        n.max(self.floor).clamp(self.min, self.max.max(self.min))
    }
}

/// A policy's answer: the size to ask for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) desired: u32,
    pub(crate) reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Policy {
    Tidegate(TidegateParams),
    Kpa,
    Hpa,
    Static(u32),
}

impl Policy {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Policy::Tidegate(_) => "tidegate",
            Policy::Kpa => "kpa",
            Policy::Hpa => "hpa",
            Policy::Static(_) => "static",
        }
    }
}

/// What a policy remembers between decisions.
#[derive(Debug, Clone, Default)]
pub(crate) struct PolicyState {
    panic_until: Option<u64>,
    panic_peak: u32,
    recommendations: VecDeque<(u64, u32)>,
    tidegate: TidegateState,
}

/// KPA and HPA target this share of a backend's limit.
const TARGET_UTILISATION: f64 = 0.7;

/// The size the pool should have now, or `None` when this policy does not
/// decide at `now` (KPA every 2 s, HPA every 15 s).
pub(crate) fn decide(
    policy: &Policy,
    st: &mut PolicyState,
    h: &History,
    now: u64,
    pool: &PoolView,
) -> Option<Decision> {
    match policy {
        Policy::Static(n) => Some(Decision {
            desired: pool.clamp(*n),
            reason: "static".into(),
        }),
        Policy::Kpa => now.is_multiple_of(2).then(|| kpa(st, h, now, pool)),
        Policy::Hpa => now.is_multiple_of(15).then(|| hpa(st, h, now, pool)),
        Policy::Tidegate(p) => Some(tidegate::decide(p, &mut st.tidegate, h, now, pool)),
    }
}

fn per_backend_target(pool: &PoolView) -> f64 {
    target_per_backend(pool.slots)
}

/// The demand (in flight + queued) one backend with `slots` of
/// concurrency should carry: 70 % of its limit, Knative's and the HPA's
/// target. `GET /demand` publishes it as the `targetValue` for an outside
/// scaler (KEDA) that divides the summed demand by it.
pub(crate) fn target_per_backend(slots: u32) -> f64 {
    TARGET_UTILISATION * f64::from(slots.max(1))
}

/// Knative's KPA, as `pkg/autoscaler/scaling/autoscaler.go` (`Scale`)
/// computes it with the `config-autoscaler` defaults: target = 70 % of the
/// hard concurrency limit (`container-concurrency-target-percentage: 70`),
/// `stable-window: 60s`, `panic-window-percentage: 10` (6 s),
/// `panic-threshold-percentage: 200`, `max-scale-up-rate: 1000`,
/// `max-scale-down-rate: 2`, a decision every 2 s (`tick-interval`).
/// The desired counts are clamped to `[floor(ready / 2), ceil(1000 x
/// ready)]`; panic starts when the panic count reaches twice the ready
/// pods, keeps the highest panic count (never scales down), and ends a
/// stable window after the last time it was over the threshold.
/// The observed concurrency is in flight + queued, as Knative's
/// queue-proxy reports it.
fn kpa(st: &mut PolicyState, h: &History, now: u64, pool: &PoolView) -> Decision {
    let target = per_backend_target(pool);
    let ready = f64::from(pool.ready.max(1));
    let (lo, hi) = ((ready / 2.0).floor() as u32, (1000.0 * ready).ceil() as u32);
    let stable = ((h.mean(now, 60, |s| s.concurrency) / target).ceil() as u32).clamp(lo, hi);
    let panic = ((h.mean(now, 6, |s| s.concurrency) / target).ceil() as u32).clamp(lo, hi);
    let over = f64::from(panic) / ready >= 2.0;
    if over {
        st.panic_until = Some(now + 60);
    } else if st.panic_until.is_some_and(|until| now >= until) {
        st.panic_until = None;
        st.panic_peak = 0;
    }
    let (desired, reason) = if st.panic_until.is_some() {
        st.panic_peak = st.panic_peak.max(panic);
        (st.panic_peak, format!("kpa panic: 6 s concurrency wants {panic}"))
    } else {
        (stable, format!("kpa stable: 60 s concurrency wants {stable}"))
    };
    Decision {
        desired: pool.clamp(desired),
        reason,
    }
}

/// The Kubernetes HPA with its documented defaults: `desiredReplicas =
/// ceil(currentReplicas x currentMetricValue / desiredMetricValue)`, no
/// change within the 10 % tolerance, a sync every 15 s
/// (`--horizontal-pod-autoscaler-sync-period`), scale-up limited per period
/// by the default `behavior` (`Percent 100` or `Pods 4`, whichever allows
/// more), scale-down to the highest recommendation of the
/// `stabilizationWindowSeconds: 300`. The metric is the pods' mean
/// concurrency (in flight + queued) against a target of 70 % of the
/// concurrency limit: a custom Pods metric, as a shop would export it (a
/// CPU target cannot see a queue). Pods not ready yet count as replicas
/// but not in the metric's mean.
fn hpa(st: &mut PolicyState, h: &History, now: u64, pool: &PoolView) -> Decision {
    let target = per_backend_target(pool);
    let load = h.mean(now, 15, |s| s.concurrency);
    let ready = pool.ready;
    let recommendation = if ready == 0 {
        (load / target).ceil() as u32
    } else {
        let ratio = load / (f64::from(ready) * target);
        if (ratio - 1.0).abs() <= 0.1 {
            ready
        } else {
            (f64::from(ready) * ratio).ceil() as u32
        }
    };
    st.recommendations.push_back((now, recommendation));
    while st.recommendations.front().is_some_and(|(t, _)| *t + 300 <= now) {
        st.recommendations.pop_front();
    }
    let (desired, reason) = if recommendation > pool.current() {
        let current = pool.current();
        let limit = (2 * current).max(current + 4);
        (
            recommendation.min(limit),
            format!("hpa: utilisation wants {recommendation}, up to {limit} per period"),
        )
    } else {
        let highest = st
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(recommendation);
        (highest, format!("hpa: highest recommendation of 300 s is {highest}"))
    };
    Decision {
        desired: pool.clamp(desired),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::signal::Sample;

    fn pool(ready: u32) -> PoolView {
        PoolView {
            ready,
            provisioning: 0,
            slots: 10,
            min: 1,
            max: 100,
            floor: 0,
            forecast_rate: None,
            forecast_error: None,
            forecast_peak_hits: None,
            provisioning_delay: 30.0,
        }
    }

    /// `secs` seconds of steady load ending at `end`.
    fn steady(h: &mut History, from: u64, end: u64, arrivals: f64, service: f64) {
        for t in from..=end {
            h.push(Sample {
                t,
                arrivals,
                completed: arrivals,
                concurrency: arrivals * service,
                queued: 0.0,
                queue_wait: 0.0,
                class_wait: [0.0; 3],
                service_cv2: None,
            });
        }
    }

    #[test]
    fn kpa_targets_seventy_percent_and_panics_on_a_spike() {
        let (mut st, mut h) = (PolicyState::default(), History::new(600));
        steady(&mut h, 1, 120, 1400.0, 0.05); // 70 in flight / 7 per backend
        let d = decide(&Policy::Kpa, &mut st, &h, 120, &pool(10)).unwrap();
        assert_eq!(d.desired, 10);
        steady(&mut h, 121, 126, 5600.0, 0.05); // 4x for 6 s
        let d = decide(&Policy::Kpa, &mut st, &h, 126, &pool(10)).unwrap();
        assert!(d.reason.contains("panic") && d.desired >= 35, "{d:?}");
        // Load falls at once, but no scale-down in panic.
        steady(&mut h, 127, 140, 100.0, 0.05);
        let d = decide(&Policy::Kpa, &mut st, &h, 140, &PoolView { ready: 40, ..pool(40) }).unwrap();
        assert_eq!(d.desired, 40);
        assert!(decide(&Policy::Kpa, &mut st, &h, 141, &pool(40)).is_none(), "every 2 s");
    }

    #[test]
    fn kpa_scales_down_at_most_by_half() {
        let (mut st, mut h) = (PolicyState::default(), History::new(600));
        steady(&mut h, 1, 120, 10.0, 0.05);
        let d = decide(&Policy::Kpa, &mut st, &h, 120, &pool(40)).unwrap();
        assert_eq!(d.desired, 20);
    }

    #[test]
    fn hpa_tolerance_step_limit_and_scale_down_window() {
        let (mut st, mut h) = (PolicyState::default(), History::new(600));
        steady(&mut h, 1, 15, 1500.0, 0.05); // 75 in flight, 10 x 7 target: ratio 1.07
        assert_eq!(decide(&Policy::Hpa, &mut st, &h, 15, &pool(10)).unwrap().desired, 10);
        steady(&mut h, 16, 30, 10_000.0, 0.05); // ratio 7.1 -> 72, limited to 2x = 20
        assert_eq!(decide(&Policy::Hpa, &mut st, &h, 30, &pool(10)).unwrap().desired, 20);
        steady(&mut h, 31, 45, 100.0, 0.05); // wants 1, but 72 was recommended 15 s ago
        assert_eq!(decide(&Policy::Hpa, &mut st, &h, 45, &pool(20)).unwrap().desired, 72);
        assert!(decide(&Policy::Hpa, &mut st, &h, 46, &pool(20)).is_none(), "every 15 s");
    }

    #[test]
    fn floor_min_and_max_bound_every_policy() {
        let (mut st, mut h) = (PolicyState::default(), History::new(600));
        steady(&mut h, 1, 60, 1.0, 0.01);
        let view = PoolView { floor: 12, ..pool(3) };
        for policy in [
            Policy::Kpa,
            Policy::Hpa,
            Policy::Tidegate(TidegateParams::default()),
            Policy::Static(2),
        ] {
            let d = decide(&policy, &mut st, &h, 60, &view).unwrap();
            assert_eq!(d.desired, 12, "{}", policy.name());
        }
        let view = PoolView { max: 5, ..pool(3) };
        assert_eq!(decide(&Policy::Static(50), &mut st, &h, 60, &view).unwrap().desired, 5);
    }
}
