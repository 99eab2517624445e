//! A pool: the backends one route sends to, and how a request gets a slot
//! on one of them.
//!
//! Data path, below the proxy: imports only `balance`, `upstream`,
//! `histogram`, `config` and `clock`. `backend.rs` is the per-backend object
//! the data path reads (atomics) and the control path carries across
//! reloads; `queue.rs` is admission's bounded queue (a FIFO lane per
//! priority class) and the in-flight guard;
//! `health/` keeps each backend's health (probe streaks, passive ejection,
//! slow start). [`Pool`] is one generation's view of a pool (immutable once
//! published in a snapshot); its [`Queue`] and round-robin cursor live in
//! [`PoolShared`], which outlives generations.

pub mod backend;
pub(crate) mod health;
#[cfg(test)]
mod pick_tests;
#[cfg(test)]
mod priority_tests;
pub mod queue;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

pub use backend::{Backend, BackendState};

use crate::balance::{Balancer, PickContext};
use crate::config::{PoolConfig, Priority};
use crate::histogram::LatencyHistogram;
use crate::upstream::tls::Connector;
pub use queue::{InFlight, Queue, QueueError, Waiting};

/// Times a request re-picks after losing a claim race before queueing.
const CLAIM_ATTEMPTS: usize = 4;

/// Per-pool state that survives reloads: the queue, the round-robin
/// position, and the pool's own totals (which must not reset when a reload
/// replaces the backends they were counted on).
pub struct PoolShared {
    pub(crate) queue: Arc<Queue>,
    pub(crate) rr_cursor: Arc<AtomicUsize>,
    responses: [AtomicU64; 6],
    latency: LatencyHistogram,
    arrivals: AtomicU64,
    /// Sum and sum of squares of response times (µs, wrapping), for the
    /// autoscaler's service-time variability.
    time_sum_us: AtomicU64,
    time_sq_sum: AtomicU64,
    /// Responses tidegate answered itself for this pool, by reason index
    /// (the proxy's error labels).
    errors: [AtomicU64; ERROR_SLOTS],
    /// Request body bytes read from clients (each body adds its count when
    /// done, hence shared).
    pub(crate) bytes_in: Arc<AtomicU64>,
    /// Response body bytes passed to clients.
    bytes_out: AtomicU64,
}

/// Reason slots counted per pool (the proxy has fewer reasons than this).
pub(crate) const ERROR_SLOTS: usize = 24;

impl PoolShared {
    /// A pool's state with a queue of at most `queue_max_depth` waiters.
    pub fn new(queue_max_depth: usize) -> PoolShared {
        PoolShared {
            queue: Arc::new(Queue::new(queue_max_depth)),
            rr_cursor: Arc::new(AtomicUsize::new(0)),
            responses: Default::default(),
            latency: LatencyHistogram::default(),
            arrivals: AtomicU64::new(0),
            time_sum_us: AtomicU64::new(0),
            time_sq_sum: AtomicU64::new(0),
            errors: Default::default(),
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: AtomicU64::new(0),
        }
    }

    /// Data path: `n` response body bytes went to a client.
    #[inline]
    pub(crate) fn count_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Body bytes `(in, out)` since the pool was created.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        )
    }

    /// Data path: tidegate answered a request of this pool itself, for the
    /// reason at `index` (out of range is ignored).
    #[inline]
    pub(crate) fn count_error(&self, index: usize) {
        if let Some(c) = self.errors.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Errors counted since the pool was created, by reason index.
    pub(crate) fn error_counts(&self) -> [u64; ERROR_SLOTS] {
        std::array::from_fn(|i| self.errors[i].load(Ordering::Relaxed))
    }

    /// Data path: a request was routed to this pool (the autoscaler's
    /// arrival rate).
    #[inline]
    pub(crate) fn count_arrival(&self) {
        self.arrivals.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn arrivals(&self) -> u64 {
        self.arrivals.load(Ordering::Relaxed)
    }

    /// Data path: one finished exchange (`class` as in [`backend::CLASSES`]).
    #[inline]
    pub(crate) fn record(&self, class: usize, elapsed_ns: u64) {
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.latency.record_ns(elapsed_ns);
        let us = elapsed_ns / 1000;
        self.time_sum_us.fetch_add(us, Ordering::Relaxed);
        self.time_sq_sum.fetch_add(us.wrapping_mul(us), Ordering::Relaxed);
    }

    /// Running (wrapping) sums of response times and of their squares, in
    /// µs: differences over a second give the mean and variance.
    pub(crate) fn time_sums(&self) -> (u64, u64) {
        (
            self.time_sum_us.load(Ordering::Relaxed),
            self.time_sq_sum.load(Ordering::Relaxed),
        )
    }

    /// Responses since the pool was created, in [`backend::CLASSES`] order.
    pub(crate) fn response_counts(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.responses[i].load(Ordering::Relaxed))
    }

    pub(crate) fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }
}

/// Why admission gave no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdmitError {
    #[error("no backend is available")]
    NoBackend,
    #[error(transparent)]
    Queue(#[from] QueueError),
}

pub(crate) struct Pool {
    pub(crate) name: Arc<str>,
    pub(crate) config: Arc<PoolConfig>,
    /// Backends that may take new requests (in config order).
    pub(crate) backends: Vec<Arc<Backend>>,
    /// Removed backends still finishing requests; shown in stats, never picked.
    pub(crate) draining: Vec<Arc<Backend>>,
    /// The members the provisioner provides (autoscaled pools; the one
    /// place membership is held). Static members are in `config.backends`.
    pub(crate) provisioned: Vec<SocketAddr>,
    pub(crate) balancer: Balancer,
    pub(crate) shared: Arc<PoolShared>,
    /// The TLS client for `upstream_tls` (kept across rebuilds while that
    /// table is unchanged).
    pub(crate) tls: Option<Arc<Connector>>,
}

impl Pool {
    /// A slot right now, without queueing, if the balancer finds one.
    pub(crate) fn try_claim(&self, cx: &mut PickContext<'_>) -> Option<InFlight> {
        for _ in 0..CLAIM_ATTEMPTS {
            let i = self.balancer.pick(&self.backends, cx)?;
            if let Some(slot) = InFlight::claim(&self.backends[i], &self.shared) {
                return Some(slot);
            }
            // Lost the race for its last slot to another request: pick again.
        }
        None
    }

    /// A slot now, or after waiting in the queue (in `class`'s lane,
    /// bounded, timed: a sheddable request waits at most
    /// `queue_sheddable_timeout`).
    pub(crate) async fn admit(&self, cx: &mut PickContext<'_>, class: Priority) -> Result<InFlight, AdmitError> {
        let queue = &self.shared.queue;
        // Nobody waiting: take the fast path (no lock). Someone waiting:
        // queue too, so a freed slot goes to the first class, oldest first.
        if queue.depth() == 0 {
            if let Some(slot) = self.try_claim(cx) {
                return Ok(slot);
            }
        }
        if !self.backends.iter().any(|b| b.state() == BackendState::Active) {
            // Every backend is down: answer at once rather than queue for a
            // capacity that is not coming, unless the pool fails open.
            if self.config.fail_open {
                if let Some(slot) = self
                    .backends
                    .iter()
                    .find_map(|b| InFlight::claim_fail_open(b, &self.shared))
                {
                    return Ok(slot);
                }
            }
            return Err(AdmitError::NoBackend);
        }
        let waiting = queue.enqueue(class)?;
        self.dispatch(cx.rng);
        let timeout = match class {
            // A sheddable request that waited this long is behind a standing
            // queue, not a burst: it gives its place up.
            Priority::Sheddable => self.config.queue_timeout.min(self.config.queue_sheddable_timeout),
            _ => self.config.queue_timeout,
        };
        Ok(waiting.wait(timeout).await?)
    }

    /// Gives free slots to queued requests. Called after enqueueing and by
    /// the control path after anything that adds capacity (new snapshot,
    /// backend up, limit raised).
    pub(crate) fn dispatch(&self, rng: &mut fastrand::Rng) {
        let mut cx = PickContext {
            rng,
            hash: None,
            exclude: &[],
        };
        self.shared.queue.dispatch(|| self.try_claim(&mut cx));
    }

    /// Control path: requests in flight on the pool's backends, draining
    /// ones included.
    pub(crate) fn in_flight(&self) -> u32 {
        self.backends.iter().chain(&self.draining).map(|b| b.in_flight()).sum()
    }

    /// Control path: the pool's demand, in flight + queued (concurrency,
    /// as Knative measures it): what the autoscaler sizes for and what
    /// `tidegate_pool_demand` and `GET /demand` export.
    pub(crate) fn demand(&self) -> u64 {
        u64::from(self.in_flight()) + self.shared.queue.depth() as u64
    }

    /// Control path: how many of `backends` are in each state, indexed by
    /// `BackendState as usize`.
    pub(crate) fn state_counts(&self) -> [usize; 4] {
        let mut counts = [0usize; 4];
        for b in &self.backends {
            counts[b.state() as usize] += 1;
        }
        counts
    }

    /// Control path: whether `addr` is one of `backends` and takes traffic.
    pub(crate) fn is_active(&self, addr: SocketAddr) -> bool {
        self.backends
            .iter()
            .any(|b| b.address == addr && b.state() == BackendState::Active)
    }

    /// Whether a backend that takes traffic is left that the request has not
    /// tried (`tried`: indices in `backends`).
    pub(crate) fn has_untried(&self, tried: &[usize]) -> bool {
        self.backends
            .iter()
            .enumerate()
            .any(|(i, b)| b.state() == BackendState::Active && !tried.contains(&i))
    }

    /// Position of a backend in `backends`, by identity.
    pub(crate) fn index_of(&self, backend: &Arc<Backend>) -> Option<usize> {
        self.backends.iter().position(|b| Arc::ptr_eq(b, backend))
    }
}

/// A pool named `p` built from the TOML of a `[pools.p]` table, for unit
/// tests below the state layer.
#[cfg(test)]
pub(crate) fn test_pool(pool_toml: &str) -> Pool {
    let text = format!("[[listener]]\nname = \"w\"\nlisten = \"127.0.0.1:0\"\n[pools.p]\n{pool_toml}\n");
    let config = crate::config::Config::parse(&text, "t", std::path::Path::new(".")).expect("valid test pool");
    let pc = Arc::clone(&config.pools["p"]);
    let shared = Arc::new(PoolShared::new(pc.queue_max_depth));
    let name: Arc<str> = Arc::from("p");
    let backends: Vec<Arc<Backend>> = pc
        .backends
        .iter()
        .map(|b| {
            Arc::new(Backend::new(
                b.address,
                b.weight,
                pc.max_concurrency,
                pc.max_idle_per_backend,
            ))
        })
        .collect();
    let balancer = Balancer::new(pc.balance, &backends, Arc::clone(&shared.rr_cursor));
    Pool {
        name,
        config: pc,
        backends,
        draining: Vec::new(),
        provisioned: Vec::new(),
        balancer,
        shared,
        tls: None,
    }
}
