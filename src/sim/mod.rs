//! `tidegate simulate`: replays a trace through the live loop's step
//! function (`crate::autoscale::step`) and compares policies.
//!
//! Tooling; imports only the pure autoscale code and config, and does no
//! I/O beyond what the CLI hands it. `scenario.rs` and `families.rs` make
//! traces, `corpus.rs` assembles the training and validation sets;
//! `model.rs` runs one policy on one trace on the fluid queueing model,
//! `des.rs` is the exact per-request referee; `stdio.rs` lets an outside
//! simulator drive the step. This file runs every policy (tidegate's
//! default, KPA, HPA, a static pool sized for the oracle's peak) and the
//! clairvoyant Erlang-C oracle itself, and reports per policy: the share of
//! requests whose queue wait broke the SLO, backend-seconds as a ratio to
//! the oracle's, time to capacity after a step, time back to the oracle
//! after a fall, sales with capacity in place, hook calls and direction
//! reversals per hour.

pub mod corpus;
pub mod des;
pub mod families;
pub mod model;
pub mod scenario;
pub mod stdio;
mod svg;

use crate::autoscale::policy::{Policy, TidegateParams};
use des::{Des, ServiceDist};
use model::{oracle, simulate, Fluid, Memo, Outcome, Queueing, SimParams, Tally};
use scenario::Trace;

pub use svg::chart;

/// Where `simulate --stdio` takes its step's settings from.
#[derive(Debug, Clone)]
pub enum StdioSettings {
    /// The command line's: tidegate's default policy for a pool of
    /// `slots`-slot backends, `min`..`max`, this SLO and provisioning delay.
    Flags {
        /// Provisioning delay assumed until one is observed, seconds.
        delay: f64,
        /// Queue-wait SLO, seconds.
        slo: f64,
        /// `max_concurrency` per backend.
        slots: u32,
        /// Fewest backends.
        min: u32,
        /// Most backends.
        max: u32,
    },
    /// A pool's `autoscale` table, exactly as the live loop reads it.
    Pool(Box<crate::config::PoolConfig>),
}

/// Runs `simulate --stdio` on `input` and `output` (see [`stdio`]).
pub fn run_stdio(
    settings: StdioSettings,
    input: impl std::io::BufRead,
    output: impl std::io::Write,
) -> Result<(), stdio::StdioError> {
    let params = match settings {
        StdioSettings::Flags {
            delay,
            slo,
            slots,
            min,
            max,
        } => crate::autoscale::step::StepParams {
            policy: Policy::Tidegate(TidegateParams {
                slo,
                ..TidegateParams::default()
            }),
            slots: slots.max(1),
            min,
            max: max.max(min).max(1),
            guards: crate::config::Guards::default(),
            schedule: Vec::new(),
            provisioning_delay: delay,
        },
        StdioSettings::Pool(pool) => {
            crate::autoscale::step::StepParams::from_config(&pool).ok_or_else(|| stdio::StdioError::Input {
                line: 0,
                message: format!("pool `{}` has no autoscale table", pool.name),
            })?
        }
    };
    stdio::run(params, input, output)
}

/// Which queueing model runs the simulation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    /// The fluid model: fast, for weeks of traffic.
    Fluid,
    /// The exact per-request event simulation (the referee), seeded, with
    /// this service-time distribution.
    Exact(ServiceDist, u64),
}

impl Model {
    fn queueing(self, slo: f64) -> Box<dyn Queueing> {
        match self {
            Model::Fluid => Box::new(Fluid::new(slo)),
            Model::Exact(dist, seed) => Box::new(Des::new(slo, dist, seed)),
        }
    }
}

/// One policy's figures over all seeds of one scenario.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub(crate) scenario: String,
    pub(crate) policy: String,
    pub(crate) delay_s: u64,
    pub(crate) seeds: usize,
    /// Requests simulated and those whose queue wait broke the SLO.
    pub(crate) requests: f64,
    pub(crate) violations: f64,
    /// Share of requests that waited longer than the SLO.
    pub(crate) violation_share: f64,
    /// Of which in the trace's surprises (unannounced steps and spikes,
    /// the first sale): the part no forecast could prevent.
    pub(crate) surprise_violation_share: f64,
    /// Per priority class (critical, normal, sheddable), the share of its
    /// requests that waited longer than the SLO; only for traces that carry
    /// a class mix.
    pub(crate) class_violation_share: Option<[f64; 3]>,
    /// Backend-seconds, and the oracle's on the same traces.
    pub(crate) backend_seconds: f64,
    pub(crate) oracle_backend_seconds: f64,
    /// Backend-seconds divided by the oracle's.
    pub(crate) cost_vs_oracle: f64,
    /// Worst seconds from a step to capacity (none when the trace has no step).
    pub(crate) time_to_capacity_s: Option<u64>,
    /// Worst seconds from a fall back to within 10 % of the oracle.
    pub(crate) back_to_oracle_s: Option<u64>,
    /// Share of recurring sales that found capacity in place.
    pub(crate) sales_ready_share: Option<f64>,
    pub(crate) hook_calls_per_hour: f64,
    /// Changes of direction of the size asked for, per hour.
    pub(crate) reversals_per_hour: f64,
    /// Share of the time in steady load, and the hook calls and reversals
    /// per hour of it (none when no second was steady).
    pub(crate) steady_share: f64,
    pub(crate) steady_hook_calls_per_hour: Option<f64>,
    pub(crate) steady_reversals_per_hour: Option<f64>,
}

/// The policies compared, for a trace whose oracle peaks at `peak`, with
/// tidegate's parameters as given.
pub(crate) fn policies(tidegate: TidegateParams, peak: u32) -> Vec<Policy> {
    vec![
        Policy::Tidegate(tidegate),
        Policy::Kpa,
        Policy::Hpa,
        Policy::Static(peak),
    ]
}

/// tidegate's default parameters with `key=value,...` overrides (for A/B
/// runs of the policy's parts; empty: the defaults).
pub fn tidegate_variant(overrides: &str) -> Result<Variant, String> {
    TidegateParams::default().with_overrides(overrides).map(Variant)
}

/// A variant of tidegate's policy (see [`tidegate_variant`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Variant(TidegateParams);

/// The operator's `max` for a trace whose oracle peaks at `peak`: the same
/// guard for every policy (KPA counts queued requests as load and would
/// otherwise scale to whatever `max` allows during a provisioning delay).
pub(crate) fn operator_max(p: &SimParams, peak: u32) -> u32 {
    if p.max_factor > 0.0 {
        ((f64::from(peak) * p.max_factor).ceil() as u32).max(peak + 4)
    } else {
        p.max
    }
}

/// The oracle's pool run through the same queueing: what a clairvoyant
/// pool with no provisioning delay would have cost and violated.
pub(crate) fn simulate_oracle(
    trace: &Trace,
    p: &SimParams,
    need: &[u32],
    memo: &mut Memo,
    q: &mut dyn Queueing,
) -> Outcome {
    let mut tally = Tally::default();
    for (t, &a) in trace.arrivals.iter().enumerate() {
        let servers = u64::from(need[t]) * u64::from(p.slots);
        let s = q.second(t, servers, a, p.service * trace.service_at(t), trace.mix_at(t), memo);
        tally.add(trace, t, &s);
    }
    Outcome {
        policy: "oracle".into(),
        requests: tally.requests,
        violations: tally.violations,
        surprise_violations: tally.surprise_violations,
        class_requests: tally.class_requests,
        class_violations: tally.class_violations,
        backend_seconds: need.iter().map(|&n| f64::from(n)).sum(),
        changes: model::changes(need.first().copied().unwrap_or(p.min), need, &trace.steady()),
        time_to_capacity: Vec::new(),
        back_to_oracle: Vec::new(),
        sales_ready: trace.sales.len(),
        sales: trace.sales.len(),
        ready: need.to_vec(),
    }
}

/// Every policy (and the oracle, last) on one trace.
pub(crate) fn run_all(
    trace: &Trace,
    p: &SimParams,
    model: Model,
    policies_for: &dyn Fn(u32) -> Vec<Policy>,
) -> (Vec<Outcome>, Vec<u32>, f64) {
    let mut memo = Memo::default();
    let need = oracle(trace, p, &mut memo);
    let oracle_cost: f64 = need.iter().map(|&n| f64::from(n)).sum();
    let peak = need.iter().copied().max().unwrap_or(p.min);
    let p = &SimParams {
        max: operator_max(p, peak),
        ..*p
    };
    let mut outcomes: Vec<Outcome> = policies_for(peak)
        .iter()
        .map(|pol| simulate(pol, trace, p, &need, &mut memo, &mut *model.queueing(p.slo)))
        .collect();
    outcomes.push(simulate_oracle(trace, p, &need, &mut memo, &mut *model.queueing(p.slo)));
    (outcomes, need, oracle_cost)
}

/// Sums runs of one policy (several traces) into a row.
pub(crate) fn summarise(scenario: &str, delay: u64, runs: &[(&Outcome, f64, f64)]) -> Summary {
    let requests: f64 = runs.iter().map(|(o, _, _)| o.requests).sum();
    let violations: f64 = runs.iter().map(|(o, _, _)| o.violations).sum();
    let surprise: f64 = runs.iter().map(|(o, _, _)| o.surprise_violations).sum();
    let cost: f64 = runs.iter().map(|(o, _, _)| o.backend_seconds).sum();
    let oracle_cost: f64 = runs.iter().map(|(_, c, _)| c).sum();
    let hours: f64 = runs.iter().map(|(_, _, h)| h).sum();
    let worst = |f: &dyn Fn(&Outcome) -> &Vec<u64>| runs.iter().flat_map(|(o, _, _)| f(o).iter().copied()).max();
    let sales: usize = runs.iter().map(|(o, _, _)| o.sales).sum();
    let share = |x: f64| if requests > 0.0 { x / requests } else { 0.0 };
    let mut class_requests = [0.0; 3];
    let mut class_violations = [0.0; 3];
    for (o, _, _) in runs {
        for k in 0..3 {
            class_requests[k] += o.class_requests[k];
            class_violations[k] += o.class_violations[k];
        }
    }
    let mixed = class_requests[0] + class_requests[2] > 0.0;
    let steady_hours = runs.iter().map(|(o, _, _)| o.changes.steady_seconds).sum::<u64>() as f64 / 3600.0;
    let per_steady_hour = |count: &dyn Fn(&Outcome) -> u64| {
        (steady_hours > 0.0).then(|| runs.iter().map(|(o, _, _)| count(o)).sum::<u64>() as f64 / steady_hours)
    };
    Summary {
        scenario: scenario.to_string(),
        policy: runs.first().map_or(String::new(), |(o, _, _)| o.policy.clone()),
        delay_s: delay,
        seeds: runs.len(),
        requests,
        violations,
        violation_share: share(violations),
        surprise_violation_share: share(surprise),
        class_violation_share: mixed.then(|| {
            std::array::from_fn(|k| {
                if class_requests[k] > 0.0 {
                    class_violations[k] / class_requests[k]
                } else {
                    0.0
                }
            })
        }),
        backend_seconds: cost,
        oracle_backend_seconds: oracle_cost,
        cost_vs_oracle: cost / oracle_cost.max(1.0),
        time_to_capacity_s: worst(&|o| &o.time_to_capacity),
        back_to_oracle_s: worst(&|o| &o.back_to_oracle),
        sales_ready_share: (sales > 0)
            .then(|| runs.iter().map(|(o, _, _)| o.sales_ready).sum::<usize>() as f64 / sales as f64),
        hook_calls_per_hour: runs.iter().map(|(o, _, _)| o.changes.hook_calls).sum::<u64>() as f64 / hours.max(1e-9),
        reversals_per_hour: runs.iter().map(|(o, _, _)| o.changes.reversals).sum::<u64>() as f64 / hours.max(1e-9),
        steady_share: steady_hours / hours.max(1e-9),
        steady_hook_calls_per_hour: per_steady_hour(&|o| o.changes.steady_hook_calls),
        steady_reversals_per_hour: per_steady_hour(&|o| o.changes.steady_reversals),
    }
}

/// Runs every policy and the oracle on each trace (one per seed) and
/// summarises. Also returns the first trace's outcomes and oracle, for the
/// chart.
pub fn compare(
    traces: &[Trace],
    p: &SimParams,
    model: Model,
    variant: Variant,
) -> (Vec<Summary>, Vec<Outcome>, Vec<u32>) {
    let mut per_policy: Vec<Vec<(Outcome, f64, f64)>> = Vec::new();
    let mut first: Option<(Vec<Outcome>, Vec<u32>)> = None;
    for trace in traces {
        let (outcomes, need, oracle_cost) = run_all(trace, p, model, &|peak| policies(variant.0, peak));
        let hours = trace.arrivals.len() as f64 / 3600.0;
        if per_policy.is_empty() {
            per_policy = vec![Vec::new(); outcomes.len()];
        }
        for (slot, o) in per_policy.iter_mut().zip(&outcomes) {
            slot.push((o.clone(), oracle_cost, hours));
        }
        if first.is_none() {
            first = Some((outcomes, need));
        }
    }
    let name = traces.first().map_or(String::new(), |t| t.name.clone());
    let summaries = per_policy
        .iter()
        .map(|runs| {
            let refs: Vec<(&Outcome, f64, f64)> = runs.iter().map(|(o, c, h)| (o, *c, *h)).collect();
            summarise(&name, p.delay, &refs)
        })
        .collect();
    let (outcomes, need) = first.unwrap_or_default();
    (summaries, outcomes, need)
}

/// A rate per hour to one decimal, or `-` when there was no such hour.
pub(crate) fn per_hour(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.1}"))
}

/// A Markdown table of summaries (with a column of violations per priority
/// class when the traces carry a class mix).
pub fn table(rows: &[Summary]) -> String {
    let classes = rows.iter().any(|r| r.class_violation_share.is_some());
    let mut out = String::from(
        "| scenario | delay | policy | SLO-violating requests | of which in surprises | cost vs oracle | time to capacity | back to oracle | sales ready | hook calls/h | reversals/h | steady: hook calls/h |",
    );
    if classes {
        out.push_str(" violating: critical / normal / sheddable |");
    }
    out.push_str("\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    if classes {
        out.push_str(" --- |");
    }
    out.push('\n');
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |s| format!("{s} s"));
    for r in rows {
        out.push_str(&format!(
            "| {} | {} s | {} | {:.3} % | {:.3} % | {:.2}x | {} | {} | {} | {:.1} | {:.1} | {} |",
            r.scenario,
            r.delay_s,
            r.policy,
            r.violation_share * 100.0,
            r.surprise_violation_share * 100.0,
            r.cost_vs_oracle,
            opt(r.time_to_capacity_s),
            opt(r.back_to_oracle_s),
            r.sales_ready_share
                .map_or("-".to_string(), |s| format!("{:.0} %", s * 100.0)),
            r.hook_calls_per_hour,
            r.reversals_per_hour,
            per_hour(r.steady_hook_calls_per_hour)
        ));
        if classes {
            out.push_str(&r.class_violation_share.map_or(" - |".to_string(), |[c, n, s]| {
                format!(" {:.3} % / {:.3} % / {:.3} % |", c * 100.0, n * 100.0, s * 100.0)
            }));
        }
        out.push('\n');
    }
    out
}
