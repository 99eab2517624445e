//! One backend: its address, its live load, and its counters.
//!
//! Data path: the balancer reads `in_flight`, `limit`, `weight`, `state` and
//! the latency EWMA; admission claims a slot with one CAS on `in_flight`;
//! the response body's guard gives it back. All of it is atomics, no lock.
//!
//! Control path: a `Backend` is created once per (pool, address) and carried
//! by identity across config reloads (`state.rs`), so counters and in-flight
//! counts survive; a reload only updates `weight` and `limit` in place.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::health::Health;
use crate::histogram::{LatencyHistogram, SecondsHistogram};
use crate::upstream::tls::Target;
use crate::upstream::Upstream;

/// Where a backend stands in its life cycle. Only `Active` takes new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    /// Healthy and a member: takes requests.
    Active = 0,
    /// Provisioned but not yet healthy: no traffic.
    Warming = 1,
    /// Being removed: no new requests, in-flight ones finish.
    Draining = 2,
    /// Failed its health checks: no traffic.
    Down = 3,
}

impl BackendState {
    fn from_u8(v: u8) -> BackendState {
        match v {
            0 => BackendState::Active,
            1 => BackendState::Warming,
            2 => BackendState::Draining,
            _ => BackendState::Down,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Warming => "warming",
            BackendState::Draining => "draining",
            BackendState::Down => "down",
        }
    }
}

/// Status classes counted per backend: 1xx..5xx, plus failures where the
/// backend gave no response at all.
pub(crate) const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// One backend of a pool: its address, live load and counters (see the
/// module docs).
pub struct Backend {
    /// Where it listens.
    pub address: SocketAddr,
    /// Configured weight and concurrency limit.
    base_weight: AtomicU32,
    base_limit: AtomicU32,
    /// Share of the configured values in force (slow start), per mille.
    ramp_permille: AtomicU32,
    /// Effective weight and limit: what the balancer and admission use.
    weight: AtomicU32,
    limit: AtomicU32,
    in_flight: AtomicU32,
    state: AtomicU8,
    /// Peak-EWMA latency estimate, f64 nanoseconds stored as bits.
    ewma_ns: AtomicU64,
    /// Clock reading (ns) of the last EWMA update.
    ewma_stamp_ns: AtomicU64,
    responses: [AtomicU64; 6],
    latency: LatencyHistogram,
    pub(crate) health: Health,
    pub(crate) upstream: Upstream,
    /// TLS to this backend (`upstream_tls`), read only when dialling.
    tls: ArcSwapOption<Target>,
    /// Time to the response head in Prometheus buckets, for `/metrics`.
    duration: SecondsHistogram,
}

/// Index into [`CLASSES`]: 1xx..5xx, or `error` when there was no response.
#[inline]
pub(crate) fn status_class(status: Option<u16>) -> usize {
    match status {
        Some(s) if (100..600).contains(&s) => (s / 100 - 1) as usize,
        _ => 5,
    }
}

/// `ramp_permille` when no slow start is in force.
pub(crate) const FULL_RAMP: u32 = 1000;

/// Initial latency estimate before the first response (1 ms).
const EWMA_INITIAL_NS: f64 = 1_000_000.0;

impl Backend {
    /// A backend of `weight` taking at most `limit` requests at once,
    /// keeping at most `max_idle` idle connections.
    pub fn new(address: SocketAddr, weight: u32, limit: u32, max_idle: usize) -> Backend {
        Backend {
            address,
            base_weight: AtomicU32::new(weight.max(1)),
            base_limit: AtomicU32::new(limit.max(1)),
            ramp_permille: AtomicU32::new(FULL_RAMP),
            weight: AtomicU32::new(weight.max(1)),
            limit: AtomicU32::new(limit.max(1)),
            in_flight: AtomicU32::new(0),
            state: AtomicU8::new(BackendState::Active as u8),
            ewma_ns: AtomicU64::new(EWMA_INITIAL_NS.to_bits()),
            ewma_stamp_ns: AtomicU64::new(0),
            responses: Default::default(),
            latency: LatencyHistogram::default(),
            health: Health::default(),
            upstream: Upstream::new(max_idle),
            tls: ArcSwapOption::empty(),
            duration: SecondsHistogram::default(),
        }
    }

    /// How to dial it over TLS (`None`: plain TCP).
    pub(crate) fn tls(&self) -> Option<Arc<Target>> {
        self.tls.load_full()
    }

    /// Control path (snapshot builder): TLS from now on, or not. Open
    /// connections keep what they were dialled with until they close.
    pub(crate) fn set_tls(&self, tls: Option<Arc<Target>>) {
        self.tls.store(tls);
    }

    /// Requests in flight now.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The concurrency limit in force (after slow start).
    #[inline]
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Where it stands in its life cycle.
    #[inline]
    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Whether the balancer may hand this backend a new request now.
    #[inline]
    pub(crate) fn has_free_slot(&self) -> bool {
        self.state() == BackendState::Active && self.in_flight() < self.limit()
    }

    /// Moves it in its life cycle (membership, health checks).
    pub fn set_state(&self, state: BackendState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Control path: a reload changed weight or concurrency limit.
    pub(crate) fn reconfigure(&self, weight: u32, limit: u32, max_idle: usize) {
        self.base_weight.store(weight.max(1), Ordering::Relaxed);
        self.base_limit.store(limit.max(1), Ordering::Relaxed);
        self.upstream.set_max_idle(max_idle);
        self.apply_ramp();
    }

    /// Control path (slow start): the share of configured weight and limit
    /// in force, in per mille. Returns whether capacity grew.
    pub(crate) fn set_ramp(&self, permille: u32) -> bool {
        let permille = permille.clamp(1, FULL_RAMP);
        let before = self.limit();
        self.ramp_permille.store(permille, Ordering::Relaxed);
        self.apply_ramp();
        self.limit() > before
    }

    pub(crate) fn ramp_permille(&self) -> u32 {
        self.ramp_permille.load(Ordering::Relaxed)
    }

    /// The configured concurrency limit (before slow start).
    pub(crate) fn configured_limit(&self) -> u32 {
        self.base_limit.load(Ordering::Relaxed)
    }

    fn apply_ramp(&self) {
        let p = u64::from(self.ramp_permille.load(Ordering::Relaxed));
        let scale = |base: u32| ((u64::from(base) * p / u64::from(FULL_RAMP)) as u32).max(1);
        self.weight
            .store(scale(self.base_weight.load(Ordering::Relaxed)), Ordering::Relaxed);
        self.limit
            .store(scale(self.base_limit.load(Ordering::Relaxed)), Ordering::Relaxed);
    }

    /// Claims one in-flight slot if the backend is active and below its
    /// limit. The caller owns the slot and must give it back with
    /// [`Backend::release_slot`] (the queue's `InFlight` guard does).
    #[inline]
    pub(crate) fn try_claim_slot(&self) -> bool {
        self.state() == BackendState::Active && self.claim_below_limit()
    }

    /// Claims a slot on a backend that is down (not draining), for a pool
    /// that fails open because every backend is down.
    pub(crate) fn try_claim_slot_fail_open(&self) -> bool {
        self.state() != BackendState::Draining && self.claim_below_limit()
    }

    #[inline]
    fn claim_below_limit(&self) -> bool {
        let limit = self.limit();
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |n| (n < limit).then_some(n + 1))
            .is_ok()
    }

    #[inline]
    pub(crate) fn release_slot(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Records a finished exchange: status class (`None` = no response) and
    /// the time to the response head, which feeds the peak EWMA.
    /// Returns the status class index recorded.
    pub(crate) fn record(&self, status: Option<u16>, elapsed_ns: u64, now_ns: u64, decay_ns: f64) -> usize {
        let class = status_class(status);
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.duration.record_ns(elapsed_ns);
        self.latency.record_ns(elapsed_ns);
        if status.is_some() {
            self.observe_latency(elapsed_ns as f64, now_ns, decay_ns);
        }
        class
    }

    /// Peak EWMA (as in Finagle and tower): a slower sample replaces the
    /// estimate at once, a faster one is blended in with a weight that grows
    /// with the time since the last sample. Racy read-modify-write is fine:
    /// a lost update only delays the estimate by one sample.
    fn observe_latency(&self, rtt_ns: f64, now_ns: u64, decay_ns: f64) {
        let prev = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let stamp = self.ewma_stamp_ns.swap(now_ns, Ordering::Relaxed);
        let next = if rtt_ns > prev {
            rtt_ns
        } else {
            let elapsed = now_ns.saturating_sub(stamp) as f64;
            let w = (-elapsed / decay_ns).exp();
            prev * w + rtt_ns * (1.0 - w)
        };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Latency estimate in ns, for `peak_ewma` and stats.
    #[inline]
    pub(crate) fn latency_estimate_ns(&self) -> f64 {
        f64::from_bits(self.ewma_ns.load(Ordering::Relaxed))
    }

    /// Time-to-response-head histogram (cumulative since start).
    pub(crate) fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Time to the response head in Prometheus buckets.
    pub(crate) fn duration(&self) -> &SecondsHistogram {
        &self.duration
    }

    /// Responses counted per class, in [`CLASSES`] order.
    pub(crate) fn response_counts(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.responses[i].load(Ordering::Relaxed))
    }
}

impl crate::balance::Load for Backend {
    #[inline]
    fn address(&self) -> SocketAddr {
        self.address
    }

    #[inline]
    fn in_flight(&self) -> u32 {
        Backend::in_flight(self)
    }

    #[inline]
    fn weight(&self) -> u32 {
        Backend::weight(self)
    }

    #[inline]
    fn has_free_slot(&self) -> bool {
        Backend::has_free_slot(self)
    }

    #[inline]
    fn latency_estimate_ns(&self) -> f64 {
        Backend::latency_estimate_ns(self)
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("address", &self.address)
            .field("state", &self.state())
            .field("in_flight", &self.in_flight())
            .field("limit", &self.limit())
            .field("weight", &self.weight())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(limit: u32) -> Backend {
        Backend::new("127.0.0.1:1".parse().unwrap(), 1, limit, 4)
    }

    #[test]
    fn claims_stop_at_the_limit_and_resume_after_release() {
        let b = backend(2);
        assert!(b.try_claim_slot());
        assert!(b.try_claim_slot());
        assert!(!b.try_claim_slot());
        b.release_slot();
        assert!(b.try_claim_slot());
        assert_eq!(b.in_flight(), 2);
    }

    #[test]
    fn only_active_backends_give_slots() {
        let b = backend(4);
        for s in [BackendState::Warming, BackendState::Draining, BackendState::Down] {
            b.set_state(s);
            assert!(!b.try_claim_slot());
            assert!(!b.has_free_slot());
        }
        b.set_state(BackendState::Active);
        assert!(b.try_claim_slot());
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let b = backend(1);
        let decay = 10e9;
        b.record(Some(200), 50_000_000, 1_000, decay);
        assert_eq!(b.latency_estimate_ns(), 50_000_000.0);
        // A fast sample 10 s later moves the estimate most of the way down.
        b.record(Some(200), 1_000_000, 10_000_001_000, decay);
        let est = b.latency_estimate_ns();
        assert!(est < 20_000_000.0 && est > 1_000_000.0, "{est}");
        assert_eq!(b.response_counts()[1], 2);
    }
}
