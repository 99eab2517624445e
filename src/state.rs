//! The live configuration as one immutable [`Snapshot`] behind an `ArcSwap`,
//! and the single writer that replaces it.
//!
//! Data path: each request loads the current snapshot once and uses only
//! it (routes, pools, backends, balancers): a reload can never show a request
//! half of one config and half of another.
//!
//! Control path: [`State::apply`] builds a new snapshot from a validated
//! [`Config`] off the hot path and publishes it with one atomic store.
//! Building carries per-pool state ([`PoolShared`]: queue, round-robin
//! cursor) by pool name and each [`Backend`] by (pool, address), so counters,
//! in-flight counts and queued requests survive. A backend that disappears is
//! marked draining and kept in its pool's `draining` list until its last
//! request finishes. Callers serialise `apply` (one state-owner task).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::balance::Balancer;
use crate::config::{BackendConfig, Config, Route};
use crate::pool::{Backend, BackendState, Pool, PoolShared};

/// Everything a request needs, for one config generation.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub pools: Vec<Pool>,
}

impl Snapshot {
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| &*p.name == name)
    }
}

/// A routing decision: which pool, and that route's body limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTarget {
    pub pool: usize,
    pub max_body: u64,
}

struct RouteEntry {
    prefix: String,
    target: RouteTarget,
}

/// Host + longest path prefix -> pool, precompiled per snapshot. Routes
/// naming a host win over host-less ones; among those, the longest prefix.
#[derive(Default)]
pub struct Router {
    by_host: HashMap<String, Vec<RouteEntry>>,
    any_host: Vec<RouteEntry>,
}

impl Router {
    fn new(routes: &[Route], pool_index: &HashMap<&str, usize>) -> Router {
        let mut r = Router::default();
        for route in routes {
            let entry = RouteEntry {
                prefix: route.path_prefix.clone(),
                target: RouteTarget {
                    pool: pool_index[route.pool.as_str()],
                    max_body: route.max_body,
                },
            };
            match &route.host {
                Some(h) => r.by_host.entry(h.clone()).or_default().push(entry),
                None => r.any_host.push(entry),
            }
        }
        for list in r.by_host.values_mut().chain(std::iter::once(&mut r.any_host)) {
            list.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        }
        r
    }

    /// `host` without port (any case); `path` as in the request target.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<RouteTarget> {
        let longest = |list: &[RouteEntry]| list.iter().find(|e| path.starts_with(&e.prefix)).map(|e| e.target);
        if let Some(host) = host {
            if !self.by_host.is_empty() {
                let hit = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.by_host.get(&host.to_ascii_lowercase())
                } else {
                    self.by_host.get(host)
                };
                if let Some(t) = hit.and_then(|list| longest(list)) {
                    return Some(t);
                }
            }
        }
        longest(&self.any_host)
    }
}

/// The live snapshot, the generation counter, and the members each
/// autoscaled pool's provisioner currently provides.
pub struct State {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    /// Serialises writers and holds the provisioned members (pool name ->
    /// addresses); the data path never touches it.
    writer: Mutex<HashMap<String, Vec<SocketAddr>>>,
}

impl State {
    /// The first `State` of a process also installs the Prometheus
    /// recorder, so every metric handle its backends create is live.
    pub fn new(config: Config) -> Arc<State> {
        crate::admin::metrics::handle();
        let (snapshot, _) = build(config, None, 1, &HashMap::new());
        Arc::new(State {
            current: ArcSwap::from_pointee(snapshot),
            generation: AtomicU64::new(1),
            writer: Mutex::new(HashMap::new()),
        })
    }

    /// The current snapshot (one atomic increment).
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds a snapshot for `config` from the current one and publishes it.
    /// Returns the new generation.
    pub fn apply(&self, config: Config) -> u64 {
        let members = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.publish(config, &members)
    }

    /// Control path (autoscaler): the provisioner now provides `members`
    /// for `pool`. Rebuilds the current config with them; new members join
    /// warming. Returns the new generation.
    pub fn set_members(&self, pool: &str, members: Vec<SocketAddr>) -> u64 {
        let mut all = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        all.insert(pool.to_string(), members);
        let config = (*self.load().config).clone();
        self.publish(config, &all)
    }

    fn publish(&self, config: Config, members: &HashMap<String, Vec<SocketAddr>>) -> u64 {
        let previous = self.current.load_full();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let (next, removed) = build(config, Some(&previous), generation, members);
        let next = Arc::new(next);
        self.current.store(Arc::clone(&next));
        // Only now: a request still holding the previous snapshot must never
        // see all its backends draining before the new one is published
        // (it re-routes on the new one when it finds no backend).
        for b in removed {
            b.set_state(BackendState::Draining);
        }
        // Capacity may have grown (new backends, higher limits): serve the
        // queues now rather than at the next release.
        let mut rng = fastrand::Rng::new();
        for pool in &next.pools {
            pool.dispatch(&mut rng);
        }
        generation
    }
}

/// Builds a snapshot; also returns the backends it leaves out, for the
/// caller to mark draining once the snapshot is published.
fn build(
    config: Config,
    previous: Option<&Snapshot>,
    generation: u64,
    provisioned: &HashMap<String, Vec<SocketAddr>>,
) -> (Snapshot, Vec<Arc<Backend>>) {
    let mut removed = Vec::new();
    let mut pools = Vec::with_capacity(config.pools.len());
    for (name, pc) in &config.pools {
        let old = previous.and_then(|s| s.pool(name));
        let shared = match old {
            Some(p) => {
                p.shared.queue.set_max_depth(pc.queue_max_depth);
                Arc::clone(&p.shared)
            }
            None => Arc::new(PoolShared::new(pc)),
        };
        let pool_name: Arc<str> = old.map_or_else(|| Arc::from(name.as_str()), |p| Arc::clone(&p.name));
        // Static members from the file, then what the provisioner provides
        // (only for autoscaled pools), each address once.
        let mut members: Vec<(BackendConfig, bool)> = pc.backends.iter().map(|b| (*b, false)).collect();
        if pc.autoscale.is_some() {
            for addr in provisioned.get(name).into_iter().flatten() {
                if !members.iter().any(|(b, _)| b.address == *addr) {
                    members.push((
                        BackendConfig {
                            address: *addr,
                            weight: 1,
                        },
                        true,
                    ));
                }
            }
        }
        let backends: Vec<Arc<Backend>> = members
            .iter()
            .map(|(bc, dynamic)| {
                let kept = old.and_then(|p| p.backends.iter().chain(&p.draining).find(|b| b.address == bc.address));
                match kept {
                    Some(b) => {
                        b.reconfigure(bc.weight, pc.max_concurrency, pc.max_idle_per_backend);
                        if b.state() == BackendState::Draining {
                            // Re-added while draining: it takes traffic again.
                            b.set_state(BackendState::Active);
                        }
                        Arc::clone(b)
                    }
                    None => {
                        let b = Arc::new(Backend::new(
                            Arc::clone(&pool_name),
                            bc.address,
                            bc.weight,
                            pc.max_concurrency,
                            pc.max_idle_per_backend,
                        ));
                        if *dynamic {
                            // Provisioned: no traffic until a probe passes.
                            b.set_state(BackendState::Warming);
                        }
                        b
                    }
                }
            })
            .collect();
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
        pools.push(Pool {
            name: pool_name,
            config: Arc::clone(pc),
            backends,
            draining,
            balancer,
            shared,
        });
    }
    let index: HashMap<&str, usize> = pools.iter().enumerate().map(|(i, p)| (&*p.name, i)).collect();
    let router = Router::new(&config.routes, &index);
    let snapshot = Snapshot {
        generation,
        config: Arc::new(config),
        router,
        pools,
    };
    (snapshot, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra_backend: bool, limit: u32) -> Config {
        let backends = if extra_backend {
            r#"{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002" }"#
        } else {
            r#"{ address = "127.0.0.1:9001" }"#
        };
        let text = format!(
            r#"
[[listener]]
name = "web"
listen = "127.0.0.1:8080"

[[route]]
host = "shop.example"
path_prefix = "/api"
pool = "api"

[[route]]
path_prefix = "/"
pool = "shop"

[pools.shop]
max_concurrency = {limit}
backends = [ {backends} ]

[pools.api]
backends = [ {{ address = "127.0.0.1:9100" }} ]
"#
        );
        Config::parse(&text, "t.toml", Path::new(".")).unwrap()
    }

    #[test]
    fn routes_prefer_host_then_longest_prefix() {
        let state = State::new(config(false, 4));
        let s = state.load();
        let api = s.pools.iter().position(|p| &*p.name == "api").unwrap();
        let shop = s.pools.iter().position(|p| &*p.name == "shop").unwrap();
        assert_eq!(s.router.route(Some("shop.example"), "/api/cart").unwrap().pool, api);
        assert_eq!(s.router.route(Some("SHOP.example"), "/api").unwrap().pool, api);
        assert_eq!(s.router.route(Some("shop.example"), "/cart").unwrap().pool, shop);
        assert_eq!(s.router.route(Some("other.example"), "/api/cart").unwrap().pool, shop);
        assert_eq!(s.router.route(None, "/").unwrap().pool, shop);
    }

    #[test]
    fn a_reload_keeps_backend_identity_and_drains_removed_ones() {
        let state = State::new(config(true, 4));
        let before = state.load();
        let shop = before.pool("shop").unwrap();
        let (kept, removed) = (Arc::clone(&shop.backends[0]), Arc::clone(&shop.backends[1]));
        let slot = crate::queue::InFlight::claim(&removed, &shop.shared.queue).unwrap();

        let generation = state.apply(config(false, 8));
        let after = state.load();
        let shop2 = after.pool("shop").unwrap();
        assert_eq!(generation, 2);
        assert!(Arc::ptr_eq(&shop2.backends[0], &kept), "same backend object");
        assert_eq!(kept.limit(), 8, "limit updated in place");
        assert!(Arc::ptr_eq(&shop.shared.queue, &shop2.shared.queue), "queue carried");
        assert_eq!(removed.state(), BackendState::Draining);
        assert!(Arc::ptr_eq(&shop2.draining[0], &removed));
        drop(slot);
        assert_eq!(removed.in_flight(), 0);

        // Re-adding it brings it back as the same object.
        state.apply(config(true, 8));
        let again = state.load();
        assert!(Arc::ptr_eq(&again.pool("shop").unwrap().backends[1], &removed));
        assert_eq!(removed.state(), BackendState::Active);
    }
}
