//! `tidegate simulate`: replays a trace through the real decision code
//! (`crate::autoscale::policy::decide`) and compares policies.
//!
//! Control-path tooling, no I/O beyond what the CLI reads and writes.
//! `scenario.rs` makes traces; `model.rs` runs one policy on one trace;
//! this file runs every policy (tidegate's default, KPA, HPA, a static pool
//! sized for the oracle's peak) against the clairvoyant Erlang-C oracle
//! over several seeds and reports, per policy: the share of requests whose
//! queue wait broke the SLO, backend-seconds as a ratio to the oracle, time
//! to capacity after a step, time back to the oracle after a fall, sales
//! with capacity in place, and hook calls per hour.

pub mod model;
pub mod scenario;
pub mod stdio;
mod svg;

use crate::autoscale::policy::{Policy, TidegateParams};
use model::{oracle, simulate, Memo, Outcome, SimParams};
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

/// One policy's figures over all seeds of one scenario.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub(crate) scenario: String,
    pub(crate) policy: String,
    pub(crate) delay_s: u64,
    pub(crate) seeds: usize,
    /// Share of requests that waited longer than the SLO.
    pub(crate) violation_share: f64,
    /// Of which in the trace's surprises (unannounced steps and spikes,
    /// the first sale): the part no forecast could prevent.
    pub(crate) surprise_violation_share: f64,
    /// Backend-seconds divided by the oracle's.
    pub(crate) cost_vs_oracle: f64,
    /// Worst seconds from a step to capacity (none when the trace has no step).
    pub(crate) time_to_capacity_s: Option<u64>,
    /// Worst seconds from a fall back to within 10 % of the oracle.
    pub(crate) back_to_oracle_s: Option<u64>,
    /// Share of recurring sales that found capacity in place.
    pub(crate) sales_ready_share: Option<f64>,
    pub(crate) hook_calls_per_hour: f64,
}

/// The policies compared, for a trace whose oracle peaks at `peak`.
pub(crate) fn policies(peak: u32) -> Vec<Policy> {
    vec![
        Policy::Tidegate(TidegateParams::default()),
        Policy::Kpa,
        Policy::Hpa,
        Policy::Static(peak),
    ]
}

/// Runs every policy on each trace (one per seed) and summarises. Also
/// returns the first seed's outcomes and oracle, for the chart.
pub fn compare(traces: &[Trace], p: &SimParams) -> (Vec<Summary>, Vec<Outcome>, Vec<u32>) {
    let mut per_policy: Vec<Vec<(Outcome, f64)>> = Vec::new();
    let mut first: Option<(Vec<Outcome>, Vec<u32>)> = None;
    for trace in traces {
        let mut memo = Memo::default();
        let need = oracle(trace, p, &mut memo);
        let oracle_cost: f64 = need.iter().map(|&n| f64::from(n)).sum();
        let peak = need.iter().copied().max().unwrap_or(p.min);
        // The operator's guard, the same for every policy: by default room
        // for twice the peak (KPA counts queued requests as load and would otherwise
        // scale to whatever `max` allows during a provisioning delay).
        let p = &SimParams {
            max: if p.max_factor > 0.0 {
                ((f64::from(peak) * p.max_factor).ceil() as u32).max(peak + 4)
            } else {
                p.max
            },
            ..*p
        };
        let outcomes: Vec<Outcome> = policies(peak)
            .iter()
            .map(|pol| simulate(pol, trace, p, &need, &mut memo))
            .collect();
        if per_policy.is_empty() {
            per_policy = vec![Vec::new(); outcomes.len()];
        }
        for (slot, o) in per_policy.iter_mut().zip(&outcomes) {
            slot.push((o.clone(), oracle_cost));
        }
        if first.is_none() {
            first = Some((outcomes, need));
        }
    }
    let name = traces.first().map_or(String::new(), |t| t.name.clone());
    let summaries = per_policy
        .iter()
        .map(|runs| {
            let requests: f64 = runs.iter().map(|(o, _)| o.requests).sum();
            let violations: f64 = runs.iter().map(|(o, _)| o.violations).sum();
            let surprise: f64 = runs.iter().map(|(o, _)| o.surprise_violations).sum();
            let cost: f64 = runs.iter().map(|(o, _)| o.backend_seconds).sum();
            let oracle_cost: f64 = runs.iter().map(|(_, c)| c).sum();
            let hours: f64 = traces.iter().map(|t| t.arrivals.len() as f64 / 3600.0).sum();
            let worst = |f: &dyn Fn(&Outcome) -> &Vec<u64>| runs.iter().flat_map(|(o, _)| f(o).iter().copied()).max();
            let sales: usize = runs.iter().map(|(o, _)| o.sales).sum();
            Summary {
                scenario: name.clone(),
                policy: runs[0].0.policy.clone(),
                delay_s: p.delay,
                seeds: runs.len(),
                violation_share: if requests > 0.0 { violations / requests } else { 0.0 },
                surprise_violation_share: if requests > 0.0 { surprise / requests } else { 0.0 },
                cost_vs_oracle: cost / oracle_cost.max(1.0),
                time_to_capacity_s: worst(&|o| &o.time_to_capacity),
                back_to_oracle_s: worst(&|o| &o.back_to_oracle),
                sales_ready_share: (sales > 0)
                    .then(|| runs.iter().map(|(o, _)| o.sales_ready).sum::<usize>() as f64 / sales as f64),
                hook_calls_per_hour: runs.iter().map(|(o, _)| o.hook_calls).sum::<u64>() as f64 / hours.max(1e-9),
            }
        })
        .collect();
    let (outcomes, need) = first.unwrap_or_default();
    (summaries, outcomes, need)
}

/// A Markdown table of summaries.
pub fn table(rows: &[Summary]) -> String {
    let mut out = String::from(
        "| scenario | delay | policy | SLO-violating requests | of which in surprises | cost vs oracle | time to capacity | back to oracle | sales ready | hook calls/h |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |s| format!("{s} s"));
    for r in rows {
        out.push_str(&format!(
            "| {} | {} s | {} | {:.3} % | {:.3} % | {:.2}x | {} | {} | {} | {:.1} |\n",
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
            r.hook_calls_per_hour
        ));
    }
    out
}
