//! A backend's health as the data path and the health checker keep it:
//! consecutive probe results, passive failures, ejection, slow start.
//!
//! Data path: [`passive_outcome`] after each exchange (atomics only; the
//! pool is scanned only at the rare moment a backend is ejected). Control
//! path: [`apply_probe`] after each active probe and [`tick`] a few times a
//! second (both called by `health/`, the probe supervisor). State changes go
//! through the backend's [`BackendState`]: `Down` (failed probes or
//! ejected), `Warming` (new, not yet healthy) to `Active`. `Draining` is the
//! membership's, and health never overrides it. The decisions themselves
//! are pure functions in `transition.rs`.
//!
//! - Passive: `consecutive_failures` failures the backend caused eject it
//!   for a period that doubles with each ejection, never more than
//!   `max_ejected_percent` of the pool at once.
//! - Slow start: a backend that comes up gets 10 % of its weight and limit,
//!   growing to 100 % over `slow_start`.

pub(crate) mod transition;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::backend::FULL_RAMP;
use super::{Backend, BackendState, Pool};
use crate::config::HealthCheck;
use transition::{after_probe, ejection_period, may_eject, ramp_permille, Streak};

/// Per-backend health bookkeeping (atomics; written by the control path and,
/// for passive counts, the data path).
#[derive(Default)]
pub(crate) struct Health {
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
pub(crate) struct HealthDetail {
    pub(crate) consecutive_passes: u32,
    pub(crate) consecutive_failures: u32,
    pub(crate) passive_failures: u32,
    pub(crate) ejections: u32,
    pub(crate) ejected: bool,
    pub(crate) ramp_percent: f64,
    pub(crate) last_error: Option<String>,
}

impl Health {
    pub(crate) fn detail(&self, backend: &Backend) -> HealthDetail {
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
    pub(crate) fn came_up(&self, now_ns: u64) {
        self.up_since_ns.store(now_ns.max(1), Ordering::Relaxed);
    }
}

/// Data path, after each exchange the backend is answerable for: a connect
/// failure, a timeout while it owed bytes, a broken response or a 5xx
/// counts against it; anything else clears the count. Crossing the
/// threshold ejects the backend, if the pool's cap allows. (Failures the
/// client caused never come here.)
pub(crate) fn passive_outcome(pool: &Pool, backend: &Backend, failed: bool, now_ns: u64) {
    let h = &backend.health;
    if !failed {
        if h.passive_failures.load(Ordering::Relaxed) != 0 {
            h.passive_failures.store(0, Ordering::Relaxed);
        }
        return;
    }
    h.passive_failures.fetch_add(1, Ordering::Relaxed);
    maybe_eject(pool, backend, now_ns);
}

/// Data path, where the pool is not at hand (a backend that stalled
/// mid-body): one more failure; the next exchange or the control path's
/// [`tick`] ejects it if that crossed the threshold.
pub(crate) fn note_failure(backend: &Backend) {
    backend.health.passive_failures.fetch_add(1, Ordering::Relaxed);
}

/// Ejects `backend` if its consecutive failures reached the pool's
/// threshold and the cap on ejected backends allows.
fn maybe_eject(pool: &Pool, backend: &Backend, now_ns: u64) {
    let h = &backend.health;
    let cfg = &pool.config.passive;
    let n = h.passive_failures.load(Ordering::Relaxed);
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

/// Control path, a few times a second per pool: ejects backends whose
/// failures were noted without the pool at hand, ends expired ejections and
/// advances slow start. Returns whether any backend gained capacity (the
/// caller then serves the queue).
pub(crate) fn tick(pool: &Pool, now_ns: u64) -> bool {
    let window = pool.config.slow_start;
    let mut grew = false;
    for b in &pool.backends {
        let h = &b.health;
        maybe_eject(pool, b, now_ns);
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

/// Applies one probe result. Returns whether the backend came up.
pub(crate) fn apply_probe(
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
            tracing::info!(pool = %pool, backend = %backend.address, "backend is up");
            true
        }
        Some(false) if state == BackendState::Active => {
            h.down_by_probe.store(true, Ordering::Relaxed);
            backend.set_state(BackendState::Down);
            tracing::warn!(pool = %pool, backend = %backend.address, error = %result.err().unwrap_or_default(), "backend is down");
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;

    fn pool_with(slow_start: &str) -> Pool {
        crate::pool::test_pool(&format!(
            "max_concurrency = 100\nslow_start = \"{slow_start}\"\nbackends = [ {{ address = \"127.0.0.1:9\", weight = 10 }} ]"
        ))
    }

    #[test]
    fn slow_start_ramps_limit_and_weight_after_a_backend_comes_up() {
        let pool = pool_with("30s");
        let b = &pool.backends[0];
        let t0 = 1_000_000_000u64;
        b.health.came_up(t0);
        tick(&pool, t0);
        assert_eq!((b.limit(), b.weight()), (10, 1), "a tenth at first");
        assert!(tick(&pool, t0 + 15_000_000_000), "capacity grew");
        assert_eq!((b.limit(), b.weight()), (55, 5));
        tick(&pool, t0 + 31_000_000_000);
        assert_eq!((b.limit(), b.weight()), (100, 10));
        assert_eq!(b.configured_limit(), 100);
    }

    #[test]
    fn an_ejection_ends_when_its_period_has_passed() {
        let pool = pool_with("0s");
        let b = &pool.backends[0];
        b.set_state(BackendState::Down);
        b.health.ejected_until_ns.store(5_000, Ordering::Relaxed);
        assert!(!tick(&pool, 4_999));
        assert_eq!(b.state(), BackendState::Down);
        assert!(tick(&pool, 5_000));
        assert_eq!(b.state(), BackendState::Active);
    }

    #[test]
    fn probes_never_override_draining() {
        let pool = pool_with("0s");
        let b = &pool.backends[0];
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
