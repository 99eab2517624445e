//! `GET /demand`: each pool's demand and the autoscaler's wanted size, in a
//! shape KEDA's `metrics-api` scaler (or anything that reads JSON) can use
//! to scale the backends from outside, as `autoscale.mode = "export"`
//! intends.
//!
//! Control path, read-only: the numbers come from the snapshot's atomics
//! (`Pool::demand`, the same reading `tidegate_pool_demand` exports and the
//! autoscaler samples) and the autoscalers' published statuses. Shape
//! (documented in `docs/STATS.md`):
//!
//! ```json
//! {"pools": {"shop": {"demand": 7, "in_flight": 5, "queued": 2,
//!   "demand_1m": 6.2, "ready": 2, "desired": 3, "mode": "export",
//!   "max_concurrency": 8, "target_per_backend": 5.6}}}
//! ```
//!
//! KEDA reads one number by GJSON path (`valueLocation`): across several
//! tidegate pods, `pools.shop.demand` summed
//! (`aggregateFromKubeServiceEndpoints`, `aggregationType: sum`) over
//! `targetValue` = `target_per_backend`; with one tidegate,
//! `pools.shop.desired` over `targetValue: "1"` carries tidegate's own
//! decision (backlog, SLO, forecast, schedule) to the HPA.

use serde::Serialize;

use super::Shared;
use crate::autoscale::policy::target_per_backend;
use crate::pool::BackendState;

/// Seconds `demand_1m` averages over.
const MEAN_OVER_SECONDS: usize = 60;

/// One pool.
#[derive(Debug, Serialize)]
pub(super) struct PoolDemand {
    /// In flight + queued now.
    demand: u64,
    in_flight: u32,
    queued: usize,
    /// Mean demand over the last minute (autoscaled pools; `null`
    /// otherwise), steadier for a scaler that polls every 30 s.
    demand_1m: Option<f64>,
    /// Backends taking traffic.
    ready: usize,
    /// The autoscaler's wanted size (`null`: the pool is not autoscaled).
    desired: Option<u32>,
    /// `hook` or `export` (`null`: not autoscaled).
    mode: Option<&'static str>,
    max_concurrency: u32,
    /// The demand one backend should carry: 70 % of `max_concurrency`.
    target_per_backend: f64,
}

/// Every pool, by name.
#[derive(Debug, Serialize)]
pub(super) struct Demand {
    pools: serde_json::Map<String, serde_json::Value>,
}

pub(super) fn collect(shared: &Shared) -> Demand {
    let snapshot = shared.view.state.load();
    let pools = snapshot
        .pools
        .iter()
        .map(|p| {
            let status = shared.autoscale.status(&p.name);
            let demand_1m = shared.autoscale.seconds(&p.name).and_then(|seconds| {
                let recent = &seconds[seconds.len().saturating_sub(MEAN_OVER_SECONDS)..];
                let n = recent.len();
                (n > 0).then(|| recent.iter().map(|s| (s.in_flight + s.queued) as f64).sum::<f64>() / n as f64)
            });
            let one = PoolDemand {
                demand: p.demand(),
                in_flight: p.in_flight(),
                queued: p.shared.queue.depth(),
                demand_1m,
                ready: p.state_counts()[BackendState::Active as usize],
                desired: status.as_ref().map(|s| s.desired),
                mode: p.config.autoscale.as_ref().map(|a| a.mode_name()),
                max_concurrency: p.config.max_concurrency,
                target_per_backend: target_per_backend(p.config.max_concurrency),
            };
            let value = serde_json::to_value(one).unwrap_or_default();
            (p.name.to_string(), value)
        })
        .collect();
    Demand { pools }
}
