//! The health checker: control path, one supervisor task (spawned by
//! `app.rs`) that owns every active probe and the periodic health upkeep.
//!
//! - It keeps one probe loop per backend of every pool with `health`
//!   configured, reconciled whenever the state announces a new generation
//!   (a reload or a membership change: a provisioned member is probed as
//!   soon as it joins, not at the next poll). A probe loop ends by itself
//!   once its backend leaves the snapshot; all of them end with the
//!   supervisor.
//! - Four times a second it ends expired ejections and advances slow start
//!   (`pool::health::tick`), and serves a pool's queue when capacity grew;
//!   once a second it closes idle upstream connections past the pool's
//!   `timeouts.idle` (a quiet pool holds no sockets it will not reuse).
//!
//! Results are applied by `pool::health::apply_probe`, which holds the
//! rules (pure, in `pool/health/transition.rs`); this module only schedules.
//!
//! [`check_url`] runs the same HTTP probe once against a URL: `tidegate
//! probe`, the container images' `HEALTHCHECK` (they have no curl).

pub(crate) mod probe;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::clock::clock_ns;
use crate::pool::health::{apply_probe, tick};
use crate::pool::Backend;
use crate::shutdown::stopped;
use crate::state::State;

/// Why `tidegate probe` failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckUrlError {
    /// Not an `http://host:port/path` URL.
    #[error("`{0}` is not an http:// URL with a host")]
    Url(String),
    /// The host did not resolve.
    #[error("cannot resolve `{host}`: {reason}")]
    Resolve {
        /// The URL's host and port.
        host: String,
        /// Why.
        reason: String,
    },
    /// The probe failed (connect, timeout, or a status outside 200-299).
    #[error("{url}: {reason}")]
    Failed {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// One HTTP GET of `url` (plain `http://` only), bounded by `timeout`,
/// passing on a 2xx answer: the active probe, run once.
pub async fn check_url(url: &str, timeout: Duration) -> Result<(), CheckUrlError> {
    let uri: http::Uri = url.parse().map_err(|_| CheckUrlError::Url(url.to_string()))?;
    let authority = match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(a)) => a.clone(),
        _ => return Err(CheckUrlError::Url(url.to_string())),
    };
    let host = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
    let addr = tokio::net::lookup_host(&host)
        .await
        .map_err(|e| CheckUrlError::Resolve {
            host: host.clone(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| CheckUrlError::Resolve {
            host: host.clone(),
            reason: "no address".into(),
        })?;
    let check = crate::config::HealthCheck {
        kind: crate::config::CheckKind::Http,
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        interval: timeout,
        timeout,
        healthy: 1,
        unhealthy: 1,
        expect: (200, 299),
    };
    probe::probe(addr, &check, None)
        .await
        .map_err(|reason| CheckUrlError::Failed {
            url: url.to_string(),
            reason,
        })
}

/// How often ejections expire and slow starts advance.
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Every this many upkeep ticks (1 s), idle upstream connections past the
/// pool's `timeouts.idle` are closed.
const REAP_EVERY: u64 = 4;

/// Runs until `stop` turns true.
pub(crate) async fn run(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut changes = state.subscribe();
    let mut probes = Probes::default();
    probes.reconcile(&state);
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                probes.reconcile(&state);
            }
            _ = upkeep.tick() => {
                let now = clock_ns();
                let mut rng = fastrand::Rng::new();
                ticks = ticks.wrapping_add(1);
                for pool in &state.load().pools {
                    if tick(pool, now) {
                        pool.dispatch(&mut rng);
                    }
                    if ticks.is_multiple_of(REAP_EVERY) {
                        for b in &pool.backends {
                            b.upstream.reap(pool.config.idle_timeout);
                        }
                    }
                }
            }
            _ = stopped(&mut stop) => break,
        }
    }
}

/// The probe loops, one per checked backend.
#[derive(Default)]
struct Probes {
    tasks: JoinSet<()>,
    by_backend: HashMap<usize, (Weak<Backend>, AbortHandle)>,
}

impl Probes {
    /// Starts loops for backends that need one and forgets ended ones.
    fn reconcile(&mut self, state: &Arc<State>) {
        while self.tasks.try_join_next().is_some() {}
        self.by_backend
            .retain(|_, (b, task)| !task.is_finished() && b.strong_count() > 0);
        let snapshot = state.load();
        for pool in &snapshot.pools {
            if pool.config.health.is_none() {
                continue;
            }
            for b in &pool.backends {
                let key = Arc::as_ptr(b) as usize;
                if let Some((known, _)) = self.by_backend.get(&key) {
                    if known.upgrade().is_some_and(|k| Arc::ptr_eq(&k, b)) {
                        continue;
                    }
                }
                let task = self.tasks.spawn(check_loop(
                    Arc::downgrade(state),
                    Arc::clone(&pool.name),
                    Arc::downgrade(b),
                ));
                self.by_backend.insert(key, (Arc::downgrade(b), task));
            }
        }
    }
}

/// Probes one backend every `interval` until it leaves its pool, the pool
/// stops checking, or the state is gone. Holds only weak references
/// between probes.
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
        let result = probe::probe(b.address, &check, b.tls()).await;
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
