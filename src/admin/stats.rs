//! `GET /stats`: the JSON an operator (and the dashboard) reads. Schema in
//! `docs/STATS.md`. Control path: reads the snapshot and atomics, writes
//! nothing.

use serde::Serialize;

use super::Shared;
use crate::cluster::ClusterStatus;
use crate::config::Priority;
use crate::control::{ListenerInfo, ReloadLog};
use crate::histogram::percentiles_ms;
use crate::pool::backend::CLASSES;
use crate::pool::health::HealthDetail;
use crate::pool::Backend;
use crate::traffic::ratelimit::{RateLimit, RateLimitCounts};

#[derive(Serialize)]
pub(crate) struct Stats {
    pub(crate) version: &'static str,
    pub(crate) uptime_seconds: f64,
    pub(crate) ready: bool,
    pub(crate) listeners: Vec<ListenerInfo>,
    pub(crate) config: ConfigStats,
    pub(crate) pools: Vec<PoolStats>,
    pub(crate) rate_limits: Vec<RateLimitStats>,
    /// In etcd cluster mode: instance, role, epoch, whether etcd answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cluster: Option<ClusterStatus>,
    /// The micro-cache; `null` when no route is cached.
    pub(crate) cache: Option<CacheStats>,
}

/// The micro-cache: its size, and per pool what its requests got.
#[derive(Serialize)]
pub(crate) struct CacheStats {
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
    pub(crate) max_bytes: u64,
    pub(crate) stored_total: u64,
    pub(crate) not_stored_total: u64,
    pub(crate) evictions_total: u64,
    pub(crate) refreshes_total: u64,
    /// Hits and stale serves over all requests that could use the cache
    /// (bypasses left out); 0 before the first.
    pub(crate) hit_ratio: f64,
    pub(crate) pools: Vec<CachePoolStats>,
}

/// One pool's cached requests by result.
#[derive(Serialize)]
pub(crate) struct CachePoolStats {
    pub(crate) pool: String,
    pub(crate) hit: u64,
    pub(crate) miss: u64,
    pub(crate) stale: u64,
    pub(crate) bypass: u64,
    pub(crate) coalesced: u64,
}

fn cache_stats(c: crate::cache::Counts) -> CacheStats {
    let pools: Vec<CachePoolStats> = c
        .pools
        .iter()
        .map(|(pool, [hit, miss, stale, bypass], coalesced)| CachePoolStats {
            pool: pool.to_string(),
            hit: *hit,
            miss: *miss,
            stale: *stale,
            bypass: *bypass,
            coalesced: *coalesced,
        })
        .collect();
    let (served, usable) = c.served_and_usable();
    CacheStats {
        entries: c.entries,
        bytes: c.bytes,
        max_bytes: c.max_bytes,
        stored_total: c.stored,
        not_stored_total: c.not_stored,
        evictions_total: c.evictions,
        refreshes_total: c.refreshes,
        hit_ratio: if usable == 0 {
            0.0
        } else {
            served as f64 / usable as f64
        },
        pools,
    }
}

/// One `[[rate_limit]]` rule: its settings and counts.
#[derive(Serialize)]
pub(crate) struct RateLimitStats {
    pub(crate) name: String,
    pub(crate) rate: String,
    pub(crate) burst: u32,
    pub(crate) key: String,
    pub(crate) max_keys: usize,
    #[serde(flatten)]
    pub(crate) counts: RateLimitCounts,
}

fn rate_limit_stats(r: &RateLimit) -> RateLimitStats {
    RateLimitStats {
        name: r.name.to_string(),
        rate: r.config.rate.to_string(),
        burst: r.config.burst,
        key: r.config.key.to_string(),
        max_keys: r.config.max_keys,
        counts: r.counts(),
    }
}

#[derive(Serialize)]
pub(crate) struct ConfigStats {
    pub(crate) source: String,
    pub(crate) generation: u64,
    pub(crate) reloads: ReloadLog,
}

#[derive(Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
}

#[derive(Serialize)]
pub(crate) struct PoolStats {
    pub(crate) name: String,
    pub(crate) balance: &'static str,
    pub(crate) queue_depth: usize,
    pub(crate) queue_max_depth: usize,
    /// Waiting now, per priority class.
    pub(crate) queue_by_class: serde_json::Map<String, serde_json::Value>,
    /// Waiters evicted by critical requests, per class evicted.
    pub(crate) queue_evicted: serde_json::Map<String, serde_json::Value>,
    pub(crate) in_flight: u32,
    pub(crate) requests_total: u64,
    pub(crate) errors_total: u64,
    /// Requests that asked the pool for a backend: the autoscaler's arrival
    /// count (cache hits and stale serves are not in it).
    pub(crate) arrivals_total: u64,
    pub(crate) responses: serde_json::Map<String, serde_json::Value>,
    pub(crate) latency_ms: Option<Latency>,
    pub(crate) backends: Vec<BackendStats>,
    /// Filled by the autoscaler when the pool has one.
    pub(crate) autoscale: Option<serde_json::Value>,
}

#[derive(Serialize)]
pub(crate) struct BackendStats {
    pub(crate) address: String,
    pub(crate) state: &'static str,
    pub(crate) in_flight: u32,
    pub(crate) max_concurrency: u32,
    pub(crate) configured_max_concurrency: u32,
    pub(crate) weight: u32,
    pub(crate) requests_total: u64,
    pub(crate) responses: serde_json::Map<String, serde_json::Value>,
    pub(crate) latency_ms: Option<Latency>,
    pub(crate) health: HealthDetail,
}

const QS: [f64; 3] = [0.5, 0.9, 0.99];

fn latency<'a>(hists: impl IntoIterator<Item = &'a Backend>) -> Option<Latency> {
    percentiles_ms(hists.into_iter().map(Backend::latency), &QS).map(|p| Latency {
        p50: p[0],
        p90: p[1],
        p99: p[2],
    })
}

fn by_class(counts: &[u64; 6]) -> serde_json::Map<String, serde_json::Value> {
    CLASSES
        .iter()
        .zip(counts)
        .map(|(c, n)| ((*c).to_string(), (*n).into()))
        .collect()
}

fn per_class<T: Into<serde_json::Value> + Copy>(values: [T; 3]) -> serde_json::Map<String, serde_json::Value> {
    Priority::ALL
        .iter()
        .zip(values)
        .map(|(c, n)| (c.as_str().to_string(), n.into()))
        .collect()
}

fn backend_stats(b: &Backend) -> BackendStats {
    let counts = b.response_counts();
    BackendStats {
        address: b.address.to_string(),
        state: b.state().as_str(),
        in_flight: b.in_flight(),
        max_concurrency: b.limit(),
        configured_max_concurrency: b.configured_limit(),
        weight: b.weight(),
        requests_total: counts.iter().sum(),
        responses: by_class(&counts),
        latency_ms: latency([b]),
        health: b.health.detail(b),
    }
}

pub(crate) fn collect(shared: &Shared) -> Stats {
    let view = &shared.view;
    let snapshot = view.state.load();
    let pools = snapshot
        .pools
        .iter()
        .map(|p| {
            let all: Vec<&Backend> = p.backends.iter().chain(&p.draining).map(|b| &**b).collect();
            let totals = p.shared.response_counts();
            PoolStats {
                name: p.name.to_string(),
                balance: p.config.balance.as_str(),
                queue_depth: p.shared.queue.depth(),
                queue_max_depth: p.config.queue_max_depth,
                queue_by_class: per_class(p.shared.queue.class_depths()),
                queue_evicted: per_class(p.shared.queue.evicted()),
                in_flight: p.in_flight(),
                requests_total: totals.iter().sum(),
                errors_total: totals[4] + totals[5],
                arrivals_total: p.shared.arrivals(),
                responses: by_class(&totals),
                latency_ms: percentiles_ms([p.shared.latency()], &QS).map(|q| Latency {
                    p50: q[0],
                    p90: q[1],
                    p99: q[2],
                }),
                backends: all.iter().map(|b| backend_stats(b)).collect(),
                autoscale: shared
                    .autoscale
                    .status(&p.name)
                    .and_then(|s| serde_json::to_value(s).ok()),
            }
        })
        .collect();
    Stats {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: crate::clock::unix_ms().saturating_sub(view.started_unix_ms) as f64 / 1000.0,
        ready: view.ready.load(std::sync::atomic::Ordering::SeqCst),
        listeners: (*view.listeners.load_full()).clone(),
        config: ConfigStats {
            source: snapshot.config.source.clone(),
            generation: snapshot.generation,
            reloads: (*view.reloads.load_full()).clone(),
        },
        pools,
        rate_limits: snapshot.rate_limits.iter().map(|r| rate_limit_stats(r)).collect(),
        cache: snapshot.cache.as_ref().map(|c| cache_stats(c.counts())),
        cluster: shared.cluster.as_ref().map(|c| c.status()),
    }
}
