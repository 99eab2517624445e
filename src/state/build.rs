//! Building a snapshot from a validated config and the previous snapshot:
//! control path, off the hot path, run only by [`super::State`]'s writer.
//!
//! Per-pool state ([`PoolShared`]: queue, round-robin cursor, totals) is
//! carried by pool name, each [`Backend`] by (pool, address), each rate
//! limit's client table and counts by rule name, and the micro-cache's
//! store while `[cache] max_bytes` stays the same, so counters, in-flight
//! counts, queued requests and clients' budgets survive. A backend that
//! disappears is returned to the caller, which marks it draining once the
//! new snapshot is published; it stays in its pool's `draining` list until
//! its last request finishes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::router::Router;
use super::snapshot::Snapshot;
use crate::access_log::AccessLog;
use crate::balance::Balancer;
use crate::cache::Cache;
use crate::config::{AccessLogConfig, Config, PoolConfig};
use crate::pool::{Backend, BackendState, Pool, PoolShared};
use crate::traffic::ratelimit::RateLimit;
use crate::upstream::tls::{Connector, Target};

/// Builds a whole snapshot. Autoscaled pools keep the members their
/// provisioner provides (read from the previous snapshot). Also returns
/// the backends it leaves out.
pub(super) fn snapshot(config: Config, previous: Option<&Snapshot>, generation: u64) -> (Snapshot, Vec<Arc<Backend>>) {
    let mut removed = Vec::new();
    let pools: Vec<Arc<Pool>> = config
        .pools
        .iter()
        .map(|(name, pc)| {
            let old = previous.and_then(|s| s.pool(name)).map(|p| &**p);
            let provisioned = match (old, pc.has_dynamic_members()) {
                (Some(p), true) => p.provisioned.clone(),
                _ => Vec::new(),
            };
            let (pool, gone) = pool(name, pc, old, provisioned);
            removed.extend(gone);
            Arc::new(pool)
        })
        .collect();
    let index: HashMap<&str, usize> = pools.iter().enumerate().map(|(i, p)| (&*p.name, i)).collect();
    let router = Router::new(&config.routes, &index);
    let access_log = access_log(config.access_log.as_ref(), previous.and_then(|s| s.access_log.as_ref()));
    let rate_limits = config
        .rate_limits
        .iter()
        .map(|rule| {
            let kept = previous.and_then(|s| s.rate_limits.iter().find(|r| *r.name == *rule.name));
            Arc::new(RateLimit::new(rule, kept.map(|r| &**r)))
        })
        .collect();
    let cache = cache(&config, previous.and_then(|s| s.cache.as_ref()));
    let snapshot = Snapshot {
        generation,
        config: Arc::new(config),
        router,
        pools,
        access_log,
        rate_limits,
        cache,
    };
    (snapshot, removed)
}

/// The micro-cache when a route uses it: the running one while its size
/// stays (what it holds stays valid: each object carries the lifetime it
/// was stored with), else a new, empty one.
fn cache(config: &Config, running: Option<&Arc<Cache>>) -> Option<Arc<Cache>> {
    if !config.routes.iter().any(|r| r.cache.is_some()) {
        return None;
    }
    match running.filter(|c| c.max_bytes() == config.cache_max_bytes) {
        Some(c) => Some(Arc::clone(c)),
        None => Some(Cache::new(config.cache_max_bytes)),
    }
}

/// The writer for `wanted`: the running one when its settings are the
/// same (its file stays open), else a new one. The path was opened once
/// already when the config validated; should it fail now, requests are
/// served unlogged and the error says so.
fn access_log(wanted: Option<&AccessLogConfig>, running: Option<&Arc<AccessLog>>) -> Option<Arc<AccessLog>> {
    let wanted = wanted?;
    if let Some(log) = running.filter(|l| l.config() == wanted) {
        return Some(Arc::clone(log));
    }
    match AccessLog::start(wanted) {
        Ok(log) => Some(log),
        Err(e) => {
            tracing::error!(error = %e, path = %wanted.path.as_deref().map_or("-".into(), |p| p.display().to_string()), "cannot open the access log; requests are not logged");
            None
        }
    }
}

/// The same snapshot with one pool's provisioned members replaced: only
/// that pool is rebuilt, the others (and the config) are shared.
pub(super) fn with_members(
    previous: &Snapshot,
    name: &str,
    members: Vec<SocketAddr>,
    generation: u64,
) -> Option<(Snapshot, Vec<Arc<Backend>>)> {
    let at = previous.pools.iter().position(|p| &*p.name == name)?;
    let old = &previous.pools[at];
    let (pool, removed) = pool(name, &old.config, Some(old), members);
    let mut pools = previous.pools.clone();
    pools[at] = Arc::new(pool);
    let index: HashMap<&str, usize> = pools.iter().enumerate().map(|(i, p)| (&*p.name, i)).collect();
    let router = Router::new(&previous.config.routes, &index);
    Some((
        Snapshot {
            generation,
            config: Arc::clone(&previous.config),
            router,
            pools,
            access_log: previous.access_log.clone(),
            rate_limits: previous.rate_limits.clone(),
            cache: previous.cache.clone(),
        },
        removed,
    ))
}

/// One pool: static members from the file, then `provisioned` (from a
/// provisioner or DNS), each address once. Returns the old pool's backends left out.
fn pool(
    name: &str,
    pc: &Arc<PoolConfig>,
    old: Option<&Pool>,
    provisioned: Vec<SocketAddr>,
) -> (Pool, Vec<Arc<Backend>>) {
    let shared = match old {
        Some(p) => Arc::clone(&p.shared),
        None => Arc::new(PoolShared::new(pc.queue_max_depth)),
    };
    shared.queue.set_limits(pc.queue_max_depth, pc.queue_sheddable_share);
    if let Some(a) = &pc.autoscale {
        shared.queue.set_slo(a.slo);
    }
    let pool_name: Arc<str> = old.map_or_else(|| Arc::from(name), |p| Arc::clone(&p.name));
    let tls = connector(pc, old);
    let target = |address: SocketAddr, host: Option<&str>| {
        tls.as_ref().map(|c| {
            Arc::new(Target {
                connector: Arc::clone(c),
                name: c.name_for(host, address),
            })
        })
    };
    let mut members: Vec<(SocketAddr, u32, bool)> = pc.backends.iter().map(|b| (b.address, b.weight, false)).collect();
    let provisioned: Vec<SocketAddr> = if pc.has_dynamic_members() {
        provisioned
    } else {
        Vec::new()
    };
    for addr in &provisioned {
        if !members.iter().any(|(a, _, _)| a == addr) {
            members.push((*addr, 1, true));
        }
    }
    let backends: Vec<Arc<Backend>> = members
        .iter()
        .map(|&(address, weight, dynamic)| {
            let kept = old.and_then(|p| p.backends.iter().chain(&p.draining).find(|b| b.address == address));
            let host = pc
                .backends
                .iter()
                .find(|b| b.address == address)
                .and_then(|b| b.host.as_deref());
            let b = match kept {
                Some(b) => {
                    b.reconfigure(weight, pc.max_concurrency, pc.max_idle_per_backend);
                    if b.state() == BackendState::Draining {
                        // Re-added while draining: it takes traffic again.
                        b.set_state(BackendState::Active);
                    }
                    Arc::clone(b)
                }
                None => {
                    let b = Arc::new(Backend::new(
                        address,
                        weight,
                        pc.max_concurrency,
                        pc.max_idle_per_backend,
                    ));
                    if dynamic {
                        // Provisioned: no traffic until a probe passes.
                        b.set_state(BackendState::Warming);
                    }
                    b
                }
            };
            b.set_tls(target(address, host));
            b
        })
        .collect();
    let mut removed = Vec::new();
    let mut draining = Vec::new();
    if let Some(p) = old {
        for b in p.backends.iter().chain(&p.draining) {
            if backends.iter().any(|n| Arc::ptr_eq(n, b)) {
                continue;
            }
            removed.push(Arc::clone(b));
            if b.in_flight() > 0 {
                draining.push(Arc::clone(b));
            }
        }
    }
    let balancer = Balancer::new(pc.balance, &backends, Arc::clone(&shared.rr_cursor));
    let pool = Pool {
        name: pool_name,
        config: Arc::clone(pc),
        backends,
        draining,
        provisioned,
        balancer,
        shared,
        tls,
    };
    (pool, removed)
}

/// The pool's TLS client: the old pool's while `upstream_tls` is the same,
/// else a new one. The CA file was read when the config validated; should
/// it fail now, the pool keeps the old client (or connects to nobody in
/// the clear: every connect fails and says why).
fn connector(pc: &PoolConfig, old: Option<&Pool>) -> Option<Arc<Connector>> {
    let wanted = pc.upstream_tls.as_ref()?;
    if let Some(p) = old.filter(|p| p.config.upstream_tls.as_ref() == Some(wanted)) {
        if let Some(c) = &p.tls {
            return Some(Arc::clone(c));
        }
    }
    match Connector::new(wanted) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::error!(pool = %pc.name, error = %e, "upstream TLS cannot be set up; keeping the previous settings");
            old.and_then(|p| p.tls.clone())
                .or_else(|| Some(Arc::new(Connector::refusing())))
        }
    }
}
