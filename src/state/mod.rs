//! The live configuration: one immutable [`Snapshot`] behind an `ArcSwap`,
//! and the single writer that replaces it.
//!
//! Data path: [`State::load`] (one atomic increment) is all a request does
//! here. Control path: [`State::apply`] (a reload) and
//! [`State::set_members`] (the autoscaler) build a new snapshot off the hot
//! path (`build.rs`) and publish it with one atomic store. Writers are
//! serialised by a mutex the data path never touches. The members a
//! provisioner provides are held in one place, the published snapshot's
//! pool (`Pool::provisioned`): a reload carries them over, the autoscaler
//! replaces them.
//!
//! Every publish is announced on a `watch` channel ([`State::subscribe`]),
//! so the health checker starts probing new members at once instead of
//! discovering them by polling.

mod build;
pub(crate) mod router;
pub(crate) mod snapshot;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::Config;
use crate::pool::{Backend, BackendState, ERROR_SLOTS};
pub(crate) use snapshot::Snapshot;

/// The live snapshot, its generation counter, and the change announcements.
pub struct State {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    /// Serialises writers; the data path never touches it.
    writer: Mutex<()>,
    changed: watch::Sender<u64>,
    /// Responses tidegate answered itself before a request was routed
    /// (bad request, no route), by reason index.
    unrouted_errors: [AtomicU64; ERROR_SLOTS],
    /// The addresses tidegate's own listeners are bound to (set by the
    /// control path), so a provisioner cannot make the pool loop back.
    own_addresses: ArcSwap<Vec<SocketAddr>>,
    /// Idle HTTP/1.1 client connections parked without hyper's buffers.
    parked: AtomicU64,
}

impl State {
    /// The first snapshot, built from `config`.
    pub fn new(config: Config) -> Arc<State> {
        let (snapshot, _) = build::snapshot(config, None, 1);
        Arc::new(State {
            current: ArcSwap::from_pointee(snapshot),
            generation: AtomicU64::new(1),
            writer: Mutex::new(()),
            changed: watch::Sender::new(1),
            unrouted_errors: Default::default(),
            own_addresses: ArcSwap::from_pointee(Vec::new()),
            parked: AtomicU64::new(0),
        })
    }

    /// The current snapshot (one atomic increment).
    #[inline]
    pub(crate) fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Announces each new generation (membership or config).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Builds a snapshot for `config` from the current one and publishes it.
    /// Returns the new generation.
    pub(crate) fn apply(&self, config: Config) -> u64 {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.next_generation();
        let (next, removed) = build::snapshot(config, Some(&self.load()), generation);
        self.publish(next, removed)
    }

    /// Control path (autoscaler, DNS discovery): the provisioner now
    /// provides `members` for `pool`. Rebuilds that pool only; new members
    /// join warming, the ones left out drain. The same members again
    /// rebuild it only to let go of drained ones (a member stays listed as
    /// draining until a rebuild finds its last request gone). Returns the
    /// new generation, or `None` when the pool no longer exists.
    pub(crate) fn set_members(&self, pool: &str, members: Vec<SocketAddr>) -> Option<u64> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.load();
        let old = previous.pool(pool)?;
        if old.provisioned == members && old.draining.iter().all(|b| b.in_flight() > 0) {
            return Some(previous.generation);
        }
        let generation = self.next_generation();
        let (next, removed) = build::with_members(&previous, pool, members, generation)?;
        Some(self.publish(next, removed))
    }

    /// Control path: the addresses the listeners are bound to now.
    pub(crate) fn set_own_addresses(&self, addresses: Vec<SocketAddr>) {
        self.own_addresses.store(Arc::new(addresses));
    }

    /// The addresses the listeners are bound to.
    pub(crate) fn own_addresses(&self) -> Arc<Vec<SocketAddr>> {
        self.own_addresses.load_full()
    }

    /// Data path: tidegate answered a request itself before routing it.
    #[inline]
    pub(crate) fn count_error(&self, index: usize) {
        if let Some(c) = self.unrouted_errors.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Errors counted before routing, by reason index.
    pub(crate) fn unrouted_errors(&self) -> [u64; ERROR_SLOTS] {
        std::array::from_fn(|i| self.unrouted_errors[i].load(Ordering::Relaxed))
    }

    /// Data path: a client connection is parked until the returned
    /// guard is dropped (it woke, closed, or its task was ended).
    pub(crate) fn count_parked(&self) -> ParkedConnection<'_> {
        self.parked.fetch_add(1, Ordering::Relaxed);
        ParkedConnection(self)
    }

    /// Client connections parked now.
    pub(crate) fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn publish(&self, next: Snapshot, removed: Vec<Arc<Backend>>) -> u64 {
        let generation = next.generation;
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
        self.changed.send_replace(generation);
        generation
    }
}

/// One parked client connection in the gauge, for as long as it lives.
pub(crate) struct ParkedConnection<'a>(&'a State);

impl Drop for ParkedConnection<'_> {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::Relaxed);
    }
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
        let slot = crate::pool::InFlight::claim(&removed, &shop.shared).unwrap();

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

    #[test]
    fn the_same_members_again_let_go_of_a_drained_one() {
        let text = "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\n[pools.shop]\n\
                    backends_from = { dns = \"shop.test:8080\", nameserver = \"127.0.0.1:53\" }\n";
        let state = State::new(Config::parse(text, "t.toml", Path::new(".")).unwrap());
        let (a, b) = ("127.0.0.1:9001".parse().unwrap(), "127.0.0.1:9002".parse().unwrap());
        state.set_members("shop", vec![a, b]).unwrap();
        let before = state.load();
        let shop = before.pool("shop").unwrap();
        let leaving = Arc::clone(&shop.backends[1]);
        let slot = crate::pool::InFlight::claim_fail_open(&leaving, &shop.shared).unwrap();

        let left = state.set_members("shop", vec![a]).unwrap();
        assert_eq!(state.load().pool("shop").unwrap().draining.len(), 1);
        assert_eq!(
            state.set_members("shop", vec![a]),
            Some(left),
            "its request is still open: nothing to rebuild"
        );
        drop(slot);
        let pruned = state.set_members("shop", vec![a]).unwrap();
        assert!(pruned > left);
        assert!(state.load().pool("shop").unwrap().draining.is_empty());
        assert_eq!(state.set_members("shop", vec![a]), Some(pruned));
    }
}
