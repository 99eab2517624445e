//! Backend health: active probes, passive ejection, slow start.
//!
//! Control path, except [`passive_outcome`], which the data path calls after
//! each exchange (atomics only; the pool is scanned only at the rare moment
//! a backend is ejected). State changes go through the backend's
//! [`BackendState`]: `Down` (failed probes or ejected), `Warming` (new, not
//! yet healthy) to `Active`. `Draining` is the reload's, and health never
//! overrides it. The decisions themselves are pure functions in
//! `transition.rs`.
//!
//! - Active: one task per backend of a pool with `health` configured, a
//!   probe every `interval` (HTTP GET of `path` expecting `expect`, or a TCP
//!   connect), each within `timeout`.
//! - Passive: `consecutive_failures` connect failures or 5xx eject a backend
//!   for a period that doubles with each ejection, never more than
//!   `max_ejected_percent` of the pool at once.
//! - Slow start: a backend that comes up gets 10 % of its weight and limit,
//!   growing to 100 % over `slow_start`.

pub mod transition;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::config::{CheckKind, HealthCheck};
use crate::pool::backend::{clock_ns, FULL_RAMP};
use crate::pool::{Backend, BackendState, Pool};
use crate::state::State;
use transition::{after_probe, ejection_period, may_eject, ramp_permille, Streak};

/// Per-backend health bookkeeping (atomics; written by the control path and,
/// for passive counts, the data path).
#[derive(Default)]
pub struct Health {
    passes: AtomicU32,
    failures: AtomicU32,
    passive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Clock (ns) until which the backend is ejected; 0 = not ejected.
    ejected_until_ns: AtomicU64,
    /// Clock (ns) when it last came up, for slow start; 0 = never ramped.
    up_since_ns: AtomicU64,
    /// Taken down by active probes (as opposed to ejected).
    down_by_probe: AtomicBool,
    last_error: ArcSwapOption<String>,
}

/// What `/stats` shows of a backend's health.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthDetail {
    pub consecutive_passes: u32,
    pub consecutive_failures: u32,
    pub passive_failures: u32,
    pub ejections: u32,
    pub ejected: bool,
    pub ramp_percent: f64,
    pub last_error: Option<String>,
}

impl Health {
    pub fn detail(&self, backend: &Backend) -> HealthDetail {
        HealthDetail {
            consecutive_passes: self.passes.load(Ordering::Relaxed),
            consecutive_failures: self.failures.load(Ordering::Relaxed),
            passive_failures: self.passive_failures.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            ejected: self.ejected_until_ns.load(Ordering::Relaxed) != 0,
            ramp_percent: f64::from(backend.ramp_permille()) / 10.0,
            last_error: self.last_error.load_full().map(|e| (*e).clone()),
        }
    }

    /// Marks the moment a backend came up (slow start counts from here).
    pub fn came_up(&self, now_ns: u64) {
        self.up_since_ns.store(now_ns.max(1), Ordering::Relaxed);
    }
}

/// Data path, after each exchange: a connect failure or a 5xx counts
/// against the backend; anything else clears the count. Crossing the
/// threshold ejects the backend, if the pool's cap allows.
pub fn passive_outcome(pool: &Pool, backend: &Backend, failed: bool, now_ns: u64) {
    let h = &backend.health;
    if !failed {
        if h.passive_failures.load(Ordering::Relaxed) != 0 {
            h.passive_failures.store(0, Ordering::Relaxed);
        }
        return;
    }
    let cfg = &pool.config.passive;
    let n = h.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    if n < cfg.consecutive_failures || backend.state() != BackendState::Active {
        return;
    }
    let ejected = pool.backends.iter().filter(|b| b.state() == BackendState::Down).count();
    if !may_eject(ejected, pool.backends.len(), cfg.max_ejected_percent) {
        return;
    }
    let count = h.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let period = ejection_period(count, cfg.ejection, cfg.max_ejection);
    h.ejected_until_ns
        .store(now_ns + period.as_nanos() as u64, Ordering::Relaxed);
    h.passive_failures.store(0, Ordering::Relaxed);
    backend.set_state(BackendState::Down);
    tracing::warn!(pool = %pool.name, backend = %backend.address, ?period, "backend ejected after {n} consecutive failures");
}

/// Control path, a few times a second per pool: ends expired ejections and
/// advances slow start. Returns whether any backend gained capacity (the
/// caller then serves the queue).
pub fn tick(pool: &Pool, now_ns: u64) -> bool {
    let window = pool.config.slow_start;
    let mut grew = false;
    for b in &pool.backends {
        let h = &b.health;
        let until = h.ejected_until_ns.load(Ordering::Relaxed);
        if until != 0 && now_ns >= until {
            h.ejected_until_ns.store(0, Ordering::Relaxed);
            if b.state() == BackendState::Down && !h.down_by_probe.load(Ordering::Relaxed) {
                b.set_state(BackendState::Active);
                h.came_up(now_ns);
                grew = true;
                tracing::info!(pool = %pool.name, backend = %b.address, "ejection ended");
            }
        }
        let since = h.up_since_ns.load(Ordering::Relaxed);
        let ramp = if since == 0 {
            FULL_RAMP
        } else {
            ramp_permille(Duration::from_nanos(now_ns.saturating_sub(since)), window)
        };
        if ramp != b.ramp_permille() {
            grew |= b.set_ramp(ramp);
        }
    }
    grew
}

/// One probe, bounded by the check's timeout.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe_inner(addr, check)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

async fn probe_inner(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if check.kind == CheckKind::Tcp {
        return Ok(());
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(&check.path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "tidegate-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let code = resp.status().as_u16();
    if (check.expect.0..=check.expect.1).contains(&code) {
        Ok(())
    } else {
        Err(format!("status {code}, expected {}-{}", check.expect.0, check.expect.1))
    }
}

/// Applies one probe result. Returns whether the backend came up.
pub fn apply_probe(
    pool: &str,
    backend: &Backend,
    result: Result<(), String>,
    check: &HealthCheck,
    now_ns: u64,
) -> bool {
    let h = &backend.health;
    let state = backend.state();
    let up = matches!(state, BackendState::Active | BackendState::Draining);
    let streak = Streak {
        passes: h.passes.load(Ordering::Relaxed),
        failures: h.failures.load(Ordering::Relaxed),
    };
    let (next, change) = after_probe(up, streak, result.is_ok(), check.healthy, check.unhealthy);
    h.passes.store(next.passes, Ordering::Relaxed);
    h.failures.store(next.failures, Ordering::Relaxed);
    h.last_error.store(result.as_ref().err().map(|e| Arc::new(e.clone())));
    match change {
        Some(true) if matches!(state, BackendState::Down | BackendState::Warming) => {
            h.down_by_probe.store(false, Ordering::Relaxed);
            if h.ejected_until_ns.load(Ordering::Relaxed) != 0 {
                return false; // still ejected by passive checks: the tick ends that
            }
            backend.set_state(BackendState::Active);
            h.came_up(now_ns);
            tracing::info!(pool, backend = %backend.address, "backend is up");
            true
        }
        Some(false) if state == BackendState::Active => {
            h.down_by_probe.store(true, Ordering::Relaxed);
            backend.set_state(BackendState::Down);
            tracing::warn!(pool, backend = %backend.address, error = result.err().unwrap_or_default(), "backend is down");
            false
        }
        _ => false,
    }
}

/// Keeps one probe task per backend of every pool that has active checks.
#[derive(Default)]
pub struct Supervisor {
    tasks: HashMap<usize, JoinHandle<()>>,
}

impl Supervisor {
    /// Starts tasks for backends that need one; forgets finished ones. A
    /// task ends by itself once its backend leaves the snapshot or its pool
    /// stops checking.
    pub fn reconcile(&mut self, state: &Arc<State>) {
        self.tasks.retain(|_, t| !t.is_finished());
        let snapshot = state.load();
        for pool in &snapshot.pools {
            if pool.config.health.is_none() {
                continue;
            }
            for b in &pool.backends {
                let key = Arc::as_ptr(b) as usize;
                if self.tasks.contains_key(&key) {
                    continue;
                }
                let task = tokio::spawn(check_loop(
                    Arc::downgrade(state),
                    Arc::clone(&pool.name),
                    Arc::downgrade(b),
                ));
                self.tasks.insert(key, task);
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

async fn check_loop(state: Weak<State>, pool_name: Arc<str>, backend: Weak<Backend>) {
    loop {
        let (check, b) = {
            let Some(state) = state.upgrade() else { return };
            let snapshot = state.load();
            let Some(pool) = snapshot.pool(&pool_name) else { return };
            let Some(check) = pool.config.health.clone() else {
                return;
            };
            let Some(b) = backend.upgrade() else { return };
            if !pool.backends.iter().any(|x| Arc::ptr_eq(x, &b)) {
                return;
            }
            (check, b)
        };
        let result = probe(b.address, &check).await;
        if apply_probe(&pool_name, &b, result, &check, clock_ns()) {
            if let Some(state) = state.upgrade() {
                if let Some(pool) = state.load().pool(&pool_name) {
                    pool.dispatch(&mut fastrand::Rng::new());
                }
            }
        }
        drop(b);
        tokio::time::sleep(check.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pool_state(slow_start: &str) -> Arc<State> {
        let text = format!(
            "[[listener]]\nname = \"w\"\nlisten = \"127.0.0.1:0\"\n[pools.p]\nmax_concurrency = 100\nslow_start = \"{slow_start}\"\nbackends = [ {{ address = \"127.0.0.1:9\", weight = 10 }} ]\n"
        );
        State::new(Config::parse(&text, "t", std::path::Path::new(".")).unwrap())
    }

    #[test]
    fn slow_start_ramps_limit_and_weight_after_a_backend_comes_up() {
        let state = pool_state("30s");
        let snap = state.load();
        let (pool, b) = (&snap.pools[0], &snap.pools[0].backends[0]);
        let t0 = 1_000_000_000u64;
        b.health.came_up(t0);
        tick(pool, t0);
        assert_eq!((b.limit(), b.weight()), (10, 1), "a tenth at first");
        assert!(tick(pool, t0 + 15_000_000_000), "capacity grew");
        assert_eq!((b.limit(), b.weight()), (55, 5));
        tick(pool, t0 + 31_000_000_000);
        assert_eq!((b.limit(), b.weight()), (100, 10));
        assert_eq!(b.configured_limit(), 100);
    }

    #[test]
    fn an_ejection_ends_when_its_period_has_passed() {
        let state = pool_state("0s");
        let snap = state.load();
        let (pool, b) = (&snap.pools[0], &snap.pools[0].backends[0]);
        b.set_state(BackendState::Down);
        b.health.ejected_until_ns.store(5_000, Ordering::Relaxed);
        assert!(!tick(pool, 4_999));
        assert_eq!(b.state(), BackendState::Down);
        assert!(tick(pool, 5_000));
        assert_eq!(b.state(), BackendState::Active);
    }

    #[test]
    fn probes_never_override_draining() {
        let state = pool_state("0s");
        let snap = state.load();
        let b = &snap.pools[0].backends[0];
        b.set_state(BackendState::Draining);
        let check = HealthCheck {
            kind: CheckKind::Http,
            path: "/".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy: 1,
            unhealthy: 1,
            expect: (200, 399),
        };
        apply_probe("p", b, Err("x".into()), &check, 1);
        assert_eq!(b.state(), BackendState::Draining);
        apply_probe("p", b, Ok(()), &check, 2);
        assert_eq!(b.state(), BackendState::Draining);
    }
}
