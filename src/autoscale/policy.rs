//! Deciding the pool size: a pure function of the policy, its own state, the
//! signal history, the time and the pool's size. No tokio, no I/O, no clock:
//! the live loop and the simulator call the same code.
//!
//! Three policies, plus a fixed size for comparison:
//! - [`Policy::Tidegate`], the default: sizes for the observed arrival rate
//!   with Erlang C (the smallest pool whose queue wait breaks the SLO with
//!   probability at most `epsilon`), adds what drains the current backlog
//!   within `drain_within`, scales up at once, and scales down only to the
//!   highest size needed over the last `scale_down_window` seconds, with a
//!   dead band so steady load does not make the hook flap.
//! - [`Policy::Kpa`]: Knative's KPA with its published defaults (target
//!   0.7 x per-backend limit, 60 s stable and 6 s panic windows, panic at 2x
//!   ready, no scale-down in panic, scale-down at most halves, every 2 s).
//! - [`Policy::Hpa`]: the Kubernetes HPA with its defaults (desired =
//!   ceil(ready x current/target), 10 % tolerance, every 15 s, scale-up at
//!   most max(2x, +4) per period, scale-down to the highest recommendation
//!   of the last 300 s), on the same 0.7 utilisation target.

use std::collections::VecDeque;

use super::erlang::backends_for;
use super::signal::History;

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
    /// Seconds a new backend takes to become ready (learned from the hook).
    pub(crate) provisioning_delay: f64,
}

impl PoolView {
    pub(crate) fn current(&self) -> u32 {
        self.ready + self.provisioning
    }

    fn clamp(&self, n: u32) -> u32 {
        n.max(self.floor).clamp(self.min, self.max.max(self.min))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) desired: u32,
    pub(crate) reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TidegateParams {
    /// Queue-wait bound, seconds.
    pub(crate) slo: f64,
    /// Share of requests allowed to wait longer than `slo`.
    pub(crate) epsilon: f64,
    /// A backlog is sized to drain within this many seconds.
    pub(crate) drain_within: f64,
    /// Scale down only below the highest need of this many seconds.
    pub(crate) scale_down_window: u64,
    /// Share of the pool the dead band ignores on the way down.
    pub(crate) dead_band: f64,
    /// Seconds the backlog's capacity stays after the queue has emptied
    /// (releasing it the same second let a pool whose newest member was
    /// still ramping up flap every few seconds), never longer than
    /// `scale_down_window`.
    pub(crate) backlog_linger: u64,
}

impl Default for TidegateParams {
    fn default() -> Self {
        TidegateParams {
            slo: 0.1,
            epsilon: 0.0003,
            drain_within: 1.0,
            scale_down_window: 45,
            dead_band: 0.1,
            backlog_linger: 10,
        }
    }
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
    recommendations: VecDeque<(u64, u32)>,
    service_estimate: Option<f64>,
    /// Backlog share held until the queue is empty.
    backlog_hold: u32,
    backlog_seen: Option<u64>,
}

/// KPA and HPA target this share of a backend's limit.
const TARGET_UTILISATION: f64 = 0.7;
/// Service time assumed before any has been observed (seconds).
const INITIAL_SERVICE_TIME: f64 = 0.05;

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
        Policy::Kpa => (now % 2 == 0).then(|| kpa(st, h, now, pool)),
        Policy::Hpa => (now % 15 == 0).then(|| hpa(st, h, now, pool)),
        Policy::Tidegate(p) => Some(tidegate(p, st, h, now, pool)),
    }
}

fn per_backend_target(pool: &PoolView) -> f64 {
    TARGET_UTILISATION * f64::from(pool.slots.max(1))
}

fn kpa(st: &mut PolicyState, h: &History, now: u64, pool: &PoolView) -> Decision {
    let target = per_backend_target(pool);
    let stable = (h.mean(now, 60, |s| s.concurrency) / target).ceil() as u32;
    let panic = (h.mean(now, 6, |s| s.concurrency) / target).ceil() as u32;
    let ready = pool.ready.max(1);
    if f64::from(panic) >= 2.0 * f64::from(ready) {
        st.panic_until = Some(now + 60);
    }
    let in_panic = st.panic_until.is_some_and(|until| now < until);
    let (desired, reason) = if in_panic {
        (
            panic.max(pool.current()),
            format!("kpa panic: 6 s concurrency wants {panic}"),
        )
    } else {
        st.panic_until = None;
        let floor = pool.ready.div_ceil(2);
        (
            stable.max(floor),
            format!("kpa stable: 60 s concurrency wants {stable}"),
        )
    };
    Decision {
        desired: pool.clamp(desired),
        reason,
    }
}

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
        let limit = (2 * ready).max(ready + 4);
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

fn tidegate(p: &TidegateParams, st: &mut PolicyState, h: &History, now: u64, pool: &PoolView) -> Decision {
    // Service time by Little's law over the last 30 s: in flight divided by
    // throughput (completions: under overload arrivals would understate it).
    let completed_30 = h.mean(now, 30, |s| s.completed);
    let in_flight_30 = h.mean(now, 30, |s| s.concurrency - s.queued);
    if completed_30 > 1.0 && in_flight_30 > 0.0 {
        st.service_estimate = Some(in_flight_30 / completed_30);
    }
    let service = st.service_estimate.unwrap_or(INITIAL_SERVICE_TIME);
    let slots = u64::from(pool.slots.max(1));
    // React to the last 2 s; the window below keeps the 45 s peak.
    let rate = h.mean(now, 2, |s| s.arrivals);
    let for_rate = backends_for(rate, service, slots, p.slo, p.epsilon) as u32;
    // The backlog that will be waiting when new capacity lands: what is
    // queued now, or what the excess arrivals add over one provisioning
    // delay, whichever is larger. Sized to drain within `drain_within`.
    let backlog = h.last().map_or(0.0, |s| s.queued);
    let ready_capacity = f64::from(pool.ready) * slots as f64 / service;
    let projected = backlog.max((rate - ready_capacity).max(0.0) * pool.provisioning_delay);
    // Held at its peak until the queue is empty: shedding it as the backlog
    // shrinks would drain it exponentially, and late, instead of at once.
    let wanted = (projected * service / (p.drain_within * slots as f64)).ceil() as u32;
    if projected > 0.0 {
        st.backlog_hold = st.backlog_hold.max(wanted);
        st.backlog_seen = Some(now);
    } else if st
        .backlog_seen
        .is_none_or(|t| now >= t + p.backlog_linger.min(p.scale_down_window))
    {
        st.backlog_hold = 0;
    }
    let for_backlog = st.backlog_hold;
    st.recommendations.push_back((now, for_rate));
    while st
        .recommendations
        .front()
        .is_some_and(|(t, _)| *t + p.scale_down_window <= now)
    {
        st.recommendations.pop_front();
    }
    // The rate part scales down late (highest need of the window); the
    // backlog part goes as soon as the backlog does.
    let peak = st.recommendations.iter().map(|(_, r)| *r).max().unwrap_or(for_rate) + for_backlog;
    // Pre-scaling: what the expected rate will need, as a floor (a forecast
    // never takes capacity away).
    let for_forecast = pool
        .forecast_rate
        .map_or(0, |r| backends_for(r, service, slots, p.slo, p.epsilon) as u32);
    let peak = peak.max(for_forecast);
    let current = pool.current();
    let desired = if peak >= current {
        peak
    } else if f64::from(current - peak) <= (f64::from(current) * p.dead_band).floor() {
        current // within the dead band: not worth a hook call
    } else {
        peak
    };
    let mut reason = format!(
        "tidegate: {rate:.0} req/s x {:.0} ms needs {for_rate} (Erlang C, P(wait > {:.0} ms) <= {}), backlog {projected:.0} needs {for_backlog}, {}s peak {peak}",
        service * 1000.0,
        p.slo * 1000.0,
        p.epsilon,
        p.scale_down_window
    );
    if let Some(wait) = h.last().map(|s| s.queue_wait).filter(|w| *w > 0.0) {
        reason.push_str(&format!(", queue wait {:.0} ms", wait * 1000.0));
    }
    if let Some(r) = pool.forecast_rate {
        reason.push_str(&format!(", forecast {r:.0} req/s needs {for_forecast}"));
    }
    if pool.floor > desired {
        reason.push_str(&format!(", scheduled minimum {}", pool.floor));
    }
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
    fn tidegate_sizes_by_erlang_c_and_drains_a_backlog() {
        let (mut st, mut h) = (PolicyState::default(), History::new(600));
        let p = Policy::Tidegate(TidegateParams::default());
        steady(&mut h, 1, 60, 2000.0, 0.02); // 40 erlangs, 10 slots per backend
        let d = decide(&p, &mut st, &h, 60, &pool(4)).unwrap();
        assert_eq!(
            d.desired,
            backends_for(2000.0, 0.02, 10, 0.1, 0.0003) as u32,
            "{}",
            d.reason
        );
        h.push(Sample {
            t: 61,
            arrivals: 2000.0,
            completed: 2000.0,
            concurrency: 40.0 + 5000.0,
            queued: 5000.0,
            queue_wait: 2.5,
        });
        let with_backlog = decide(&p, &mut st, &h, 61, &pool(4)).unwrap();
        assert!(with_backlog.desired >= d.desired + 2, "{with_backlog:?}");
        assert!(
            with_backlog.reason.contains("queue wait 2500 ms"),
            "{}",
            with_backlog.reason
        );
    }

    #[test]
    fn backlog_capacity_lingers_after_the_queue_empties() {
        let (mut st, mut h) = (PolicyState::default(), History::new(600));
        let p = Policy::Tidegate(TidegateParams::default());
        steady(&mut h, 1, 60, 200.0, 0.02);
        let base = decide(&p, &mut st, &h, 60, &pool(1)).unwrap().desired;
        h.push(Sample {
            t: 61,
            arrivals: 200.0,
            completed: 200.0,
            concurrency: 4.0 + 400.0,
            queued: 400.0,
            queue_wait: 0.5,
        });
        let up = decide(&p, &mut st, &h, 61, &pool(base)).unwrap().desired;
        assert!(up > base, "{up} vs {base}");
        // The queue is gone at once, but the capacity that drained it stays
        // ten seconds: releasing it the same second made small pools flap.
        steady(&mut h, 62, 70, 200.0, 0.02);
        assert_eq!(decide(&p, &mut st, &h, 70, &pool(up)).unwrap().desired, up);
        steady(&mut h, 71, 72, 200.0, 0.02);
        assert_eq!(decide(&p, &mut st, &h, 72, &pool(up)).unwrap().desired, base);
    }

    #[test]
    fn tidegate_scales_down_late_and_ignores_small_steps_down() {
        let (mut st, mut h) = (PolicyState::default(), History::new(600));
        let p = Policy::Tidegate(TidegateParams::default());
        steady(&mut h, 1, 60, 40_000.0, 0.02);
        let high = decide(&p, &mut st, &h, 60, &pool(90)).unwrap().desired;
        steady(&mut h, 61, 80, 4_000.0, 0.02);
        assert_eq!(
            decide(&p, &mut st, &h, 80, &pool(high)).unwrap().desired,
            high,
            "within the window"
        );
        steady(&mut h, 81, 120, 4_000.0, 0.02);
        let low = decide(&p, &mut st, &h, 120, &pool(high)).unwrap().desired;
        assert!(low < high / 5, "{low} vs {high}");
        // One backend too many in a pool of ten is inside the 10 % dead band...
        assert!(low + 1 >= 10, "{low}");
        assert_eq!(decide(&p, &mut st, &h, 121, &pool(low + 1)).unwrap().desired, low + 1);
        // ...but in a small pool a step of one is worth taking.
        steady(&mut h, 122, 200, 200.0, 0.02);
        let small = decide(&p, &mut st, &h, 200, &pool(2)).unwrap().desired;
        assert_eq!(small, 1);
    }

    #[test]
    fn tidegate_estimates_service_time_from_completions_under_overload() {
        let (mut st, mut h) = (PolicyState::default(), History::new(600));
        let p = Policy::Tidegate(TidegateParams::default());
        // One backend of 10 slots saturated (500 req/s at 20 ms) while 2000
        // req/s arrive: arrivals would suggest 5 ms per request.
        for t in 1..=30 {
            h.push(Sample {
                t,
                arrivals: 2000.0,
                completed: 500.0,
                concurrency: 10.0 + 100.0 * t as f64,
                queued: 100.0 * t as f64,
                queue_wait: 0.2 * t as f64,
            });
        }
        decide(&p, &mut st, &h, 30, &pool(1)).unwrap();
        assert!((st.service_estimate.unwrap() - 0.02).abs() < 1e-9);
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

    #[test]
    fn a_forecast_raises_the_pool_ahead_of_load_and_never_lowers_it() {
        let p = Policy::Tidegate(TidegateParams::default());
        let (mut st, mut h) = (PolicyState::default(), History::new(600));
        steady(&mut h, 1, 60, 100.0, 0.02);
        let quiet = decide(&p, &mut st, &h, 60, &pool(1)).unwrap();
        let view = PoolView {
            forecast_rate: Some(2000.0),
            ..pool(quiet.desired)
        };
        let ahead = decide(&p, &mut st, &h, 61, &view).unwrap();
        assert_eq!(ahead.desired, backends_for(2000.0, 0.02, 10, 0.1, 0.0003) as u32);
        assert!(ahead.reason.contains("forecast 2000 req/s"), "{}", ahead.reason);
        // A forecast of less than the load changes nothing.
        let (mut st2, mut h2) = (PolicyState::default(), History::new(600));
        steady(&mut h2, 1, 60, 2000.0, 0.02);
        let busy = decide(&p, &mut st2, &h2, 60, &pool(4)).unwrap().desired;
        let low = PoolView {
            forecast_rate: Some(10.0),
            ..pool(busy)
        };
        assert_eq!(decide(&p, &mut st2, &h2, 61, &low).unwrap().desired, busy);
    }
}
