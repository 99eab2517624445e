//! One policy on one trace, second by second.
//!
//! The pool is `ready x slots` servers behind one FIFO queue (as tidegate's
//! admission is). Each second: arrivals join, the pool serves up to its
//! capacity, the rest waits. Requests violate the SLO when the backlog's
//! fluid wait exceeds it, otherwise with the M/M/c tail probability. The
//! policy sees what the proxy would (arrivals, in flight + queued) and its
//! decisions take effect after the provisioning delay (scale-out) or at
//! once (scale-in; draining a fast service takes well under a second).
//! Cost is backend-seconds, counting backends while they provision.

use std::collections::{HashMap, VecDeque};

use crate::autoscale::erlang::{backends_for, wait_exceeds};
use crate::autoscale::policy::Policy;
use crate::autoscale::signal::Sample;
use crate::autoscale::step::{StepParams, Stepper, Tick};
use crate::config::Guards;

use super::scenario::Trace;

/// What is simulated: the pool, the SLO and the operator's bounds.
#[derive(Debug, Clone, Copy)]
pub struct SimParams {
    /// Seconds from asking for a backend to its first request.
    pub delay: u64,
    /// Queue-wait SLO, seconds.
    pub slo: f64,
    /// `max_concurrency` per backend.
    pub slots: u32,
    /// Mean service time, seconds (exponential).
    pub service: f64,
    /// The oracle meets the SLO for all but this share of requests.
    pub epsilon: f64,
    /// The operator's `min`.
    pub min: u32,
    /// The operator's `max` (see `max_factor`).
    pub max: u32,
    /// The operator's `max` as a multiple of the oracle's peak, the same
    /// for every policy (0 = `max` as given).
    pub max_factor: f64,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            delay: 30,
            slo: 0.1,
            slots: 8,
            service: 0.02,
            epsilon: 0.001,
            min: 1,
            max: 1000,
            max_factor: 2.0,
        }
    }
}

/// Caches for the Erlang computations (inputs rounded to whole requests).
#[derive(Default)]
pub(crate) struct Memo {
    tail: HashMap<(u64, u64), f64>,
    need: HashMap<u64, u32>,
}

impl Memo {
    fn tail(&mut self, servers: u64, rate: f64, p: &SimParams) -> f64 {
        let key = (servers, rate.round() as u64);
        *self
            .tail
            .entry(key)
            .or_insert_with(|| wait_exceeds(servers, key.1 as f64, p.service, p.slo))
    }

    pub(crate) fn need(&mut self, rate: f64, p: &SimParams) -> u32 {
        let key = rate.ceil() as u64;
        *self
            .need
            .entry(key)
            .or_insert_with(|| backends_for(key as f64, p.service, u64::from(p.slots), p.slo, p.epsilon) as u32)
    }
}

/// The clairvoyant Erlang-C minimum for each second.
pub(crate) fn oracle(trace: &Trace, p: &SimParams, memo: &mut Memo) -> Vec<u32> {
    trace
        .arrivals
        .iter()
        .map(|&a| memo.need(a, p).clamp(p.min, p.max))
        .collect()
}

/// One policy's run over one trace.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub(crate) policy: String,
    pub(crate) requests: f64,
    pub(crate) violations: f64,
    /// Of which in the trace's surprises (no forecast could help).
    pub(crate) surprise_violations: f64,
    pub(crate) backend_seconds: f64,
    pub(crate) hook_calls: u64,
    /// Seconds from each step to capacity (ready >= the oracle's need).
    pub(crate) time_to_capacity: Vec<u64>,
    /// Seconds from each fall until within 10 % of the oracle's pool.
    pub(crate) back_to_oracle: Vec<u64>,
    /// Sales whose start found the capacity the oracle needs in place.
    pub(crate) sales_ready: usize,
    pub(crate) sales: usize,
    #[serde(skip)]
    pub(crate) ready: Vec<u32>,
}

/// The step the simulator runs for `policy`: the live loop's, with no
/// guards or schedule (the operator's `max` is the simulation's).
pub(crate) fn step_params(policy: &Policy, p: &SimParams) -> StepParams {
    StepParams {
        policy: *policy,
        slots: p.slots,
        min: p.min,
        max: p.max,
        guards: Guards::default(),
        schedule: Vec::new(),
        provisioning_delay: p.delay as f64,
    }
}

/// Runs `policy` over `trace` through the live loop's step function
/// (decide -> guard -> floor, forecast and delay learning included). `need`
/// is the oracle's (for the per-event measures).
pub(crate) fn simulate(policy: &Policy, trace: &Trace, p: &SimParams, need: &[u32], memo: &mut Memo) -> Outcome {
    let n = trace.arrivals.len();
    // Every policy starts where the oracle does; a static pool at its size.
    let start = match policy {
        Policy::Static(size) => *size,
        _ => need.first().copied().unwrap_or(p.min),
    };
    let mut ready = start.clamp(p.min, p.max);
    let mut provisioning: VecDeque<u64> = VecDeque::new();
    let (mut queue, mut requests, mut violations, mut cost) = (0.0f64, 0.0, 0.0, 0.0);
    let mut surprise_violations = 0.0;
    let mut stepper = Stepper::new(step_params(policy, p));
    let mut last_desired = ready;
    let mut hook_calls = 0;
    let mut ready_series = Vec::with_capacity(n);
    for t in 0..n {
        while provisioning.front().is_some_and(|&at| at <= t as u64) {
            provisioning.pop_front();
            ready += 1;
            stepper.learn_delay(p.delay as f64);
        }
        let a = trace.arrivals[t];
        let servers = u64::from(ready) * u64::from(p.slots);
        let capacity = servers as f64 / p.service;
        let served = (queue + a).min(capacity);
        let next = queue + a - served;
        let late_share = if queue > 0.0 || next > 0.0 {
            let wait = if capacity > 0.0 {
                (queue + next) / 2.0 / capacity
            } else {
                f64::INFINITY
            };
            if wait > p.slo {
                1.0
            } else {
                memo.tail(servers, a.min(0.98 * capacity), p)
            }
        } else {
            memo.tail(servers, a, p)
        };
        requests += a;
        violations += a * late_share;
        if trace.surprises.iter().any(|r| r.contains(&t)) {
            surprise_violations += a * late_share;
        }
        queue = next;
        cost += f64::from(ready) + provisioning.len() as f64;
        ready_series.push(ready);

        let sample = Sample {
            t: t as u64,
            arrivals: a,
            completed: served,
            // In flight = busy servers (Little: throughput x service time).
            concurrency: (served * p.service).min(servers as f64) + queue,
            queued: queue,
            queue_wait: if capacity > 0.0 { queue / capacity } else { 0.0 },
        };
        let tick = Tick {
            t: t as u64,
            unix: t as i64,
            sample,
            ready,
            provisioning: provisioning.len() as u32,
        };
        if let Some(d) = stepper.step(&tick).decision {
            if d.desired != last_desired {
                hook_calls += 1;
                last_desired = d.desired;
            }
            let current = ready + provisioning.len() as u32;
            if d.desired > current {
                for _ in current..d.desired {
                    provisioning.push_back(t as u64 + p.delay);
                }
            } else {
                for _ in d.desired..current {
                    if provisioning.pop_back().is_none() {
                        ready = ready.saturating_sub(1).max(p.min);
                    }
                }
            }
        }
    }
    let time_to_capacity = trace
        .steps
        .iter()
        .map(|&s| {
            (s..n)
                .find(|&t| ready_series[t] >= need[t])
                .map_or((n - s) as u64, |t| (t - s) as u64)
        })
        .collect();
    let back_to_oracle = trace
        .falls
        .iter()
        .map(|&f| {
            (f..n)
                .find(|&t| f64::from(ready_series[t]) <= (f64::from(need[t]) * 1.1).ceil())
                .map_or((n - f) as u64, |t| (t - f) as u64)
        })
        .collect();
    let sales_ready = trace
        .sales
        .iter()
        .filter(|&&s| s + 30 < n && ready_series[s] >= need[s + 30])
        .count();
    Outcome {
        policy: policy.name().to_string(),
        requests,
        violations,
        surprise_violations,
        backend_seconds: cost,
        hook_calls,
        time_to_capacity,
        back_to_oracle,
        sales_ready,
        sales: trace.sales.len(),
        ready: ready_series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::policy::TidegateParams;
    use crate::sim::scenario::generate;

    #[test]
    fn a_static_pool_at_the_oracles_peak_meets_the_slo_at_a_higher_cost() {
        let p = SimParams::default();
        let trace = generate("spike", 200.0, 7).unwrap();
        let mut memo = Memo::default();
        let need = oracle(&trace, &p, &mut memo);
        let peak = *need.iter().max().unwrap();
        let o = simulate(&Policy::Static(peak), &trace, &p, &need, &mut memo);
        assert!(o.violations / o.requests < 0.001, "{o:?}");
        let oracle_cost: f64 = need.iter().map(|&n| f64::from(n)).sum();
        assert!(o.backend_seconds > 2.0 * oracle_cost);
        assert_eq!(o.hook_calls, 0);
    }

    #[test]
    fn an_undersized_pool_queues_and_violates() {
        let p = SimParams::default();
        let trace = generate("step", 200.0, 7).unwrap();
        let mut memo = Memo::default();
        let need = oracle(&trace, &p, &mut memo);
        let o = simulate(&Policy::Static(1), &trace, &p, &need, &mut memo);
        assert!(o.violations / o.requests > 0.5, "{}", o.violations / o.requests);
    }

    #[test]
    fn scaling_out_waits_for_the_provisioning_delay() {
        let p = SimParams {
            delay: 30,
            ..SimParams::default()
        };
        let trace = generate("step", 200.0, 7).unwrap();
        let mut memo = Memo::default();
        let need = oracle(&trace, &p, &mut memo);
        let o = simulate(
            &Policy::Tidegate(TidegateParams::default()),
            &trace,
            &p,
            &need,
            &mut memo,
        );
        let ttc = o.time_to_capacity[0];
        assert!((30..=40).contains(&ttc), "reacts within seconds, then the delay: {ttc}");
    }
}
