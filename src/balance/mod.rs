//! Choosing a backend: `least_conn`, `p2c`, `round_robin`, `peak_ewma`,
//! `hash`, each honouring weights.
//!
//! Data path, and pure: [`Balancer::pick`] reads the backends' load through
//! the [`Load`] trait (atomics, for `pool::Backend`) and returns an index;
//! it does no I/O, takes no lock and gets its randomness from the caller
//! ([`PickContext::rng`]), so it is benchable and testable on its own. It
//! imports no other data-path module: the pool implements [`Load`]. The
//! policy layer here, not each policy, excludes backends that cannot take a
//! request now (not active, at their limit, or already tried by this
//! request): a policy only ranks the eligible ones.

mod ring;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use ring::{hash_bytes, Ring};

use crate::config::Balance;

/// What a balancer reads of a backend. Every method must be cheap and
/// lock-free: `pick` calls them on the hot path.
pub trait Load {
    /// The backend's address (the hash ring's identity).
    fn address(&self) -> SocketAddr;
    /// Requests in flight now.
    fn in_flight(&self) -> u32;
    /// Effective weight (at least 1).
    fn weight(&self) -> u32;
    /// Whether it may take a new request now (serving and below its limit).
    fn has_free_slot(&self) -> bool;
    /// Latency estimate in nanoseconds (`peak_ewma`).
    fn latency_estimate_ns(&self) -> f64;
}

/// Random draws p2c makes before falling back to a full scan (when most
/// backends are full, random draws mostly miss).
const P2C_DRAWS: usize = 3;
/// Largest round-robin schedule; weights are scaled down to fit.
const MAX_SCHEDULE: u64 = 1 << 16;

/// What one pick may depend on besides the backends themselves.
pub struct PickContext<'a> {
    /// Randomness, from the caller (seeded in tests and benches).
    pub rng: &'a mut fastrand::Rng,
    /// The request's affinity key (`hash` only).
    pub hash: Option<u64>,
    /// Indices this request already tried (connect failed).
    pub exclude: &'a [usize],
}

/// A policy plus whatever it precomputed from the membership.
#[derive(Debug)]
pub enum Balancer {
    /// Fewest in flight per unit of weight, ties at random.
    LeastConn,
    /// The less loaded of two distinct random candidates.
    P2c,
    /// Smooth weighted round robin over a precomputed schedule.
    RoundRobin {
        /// Backend indices in serving order.
        schedule: Vec<u32>,
        /// The pool's position in it (carried across reloads).
        cursor: Arc<AtomicUsize>,
    },
    /// The lower of latency x load of two random candidates.
    PeakEwma,
    /// A consistent-hash ring walked from the request's key.
    Hash(Ring),
}

#[inline]
fn eligible<B: Load>(backends: &[Arc<B>], i: usize, exclude: &[usize]) -> bool {
    backends[i].has_free_slot() && !exclude.contains(&i)
}

/// `a` carries less load per unit of weight than `b`:
/// (in_flight_a + 1) / w_a < (in_flight_b + 1) / w_b, without division.
#[inline]
fn load_cmp<B: Load>(a: &B, b: &B) -> std::cmp::Ordering {
    let la = u64::from(a.in_flight() + 1) * u64::from(b.weight());
    let lb = u64::from(b.in_flight() + 1) * u64::from(a.weight());
    la.cmp(&lb)
}

#[inline]
fn ewma_cost<B: Load>(b: &B) -> f64 {
    b.latency_estimate_ns() * f64::from(b.in_flight() + 1) / f64::from(b.weight())
}

/// Two distinct indices in `0..n` (n >= 2), uniformly.
#[inline]
pub fn p2c_candidates(rng: &mut fastrand::Rng, n: usize) -> (usize, usize) {
    let a = rng.usize(..n);
    let mut b = rng.usize(..n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

impl Balancer {
    /// Precomputes what the policy needs for this membership. `cursor` is
    /// the pool's round-robin position, carried across reloads.
    pub fn new<B: Load>(balance: Balance, backends: &[Arc<B>], cursor: Arc<AtomicUsize>) -> Balancer {
        match balance {
            Balance::LeastConn => Balancer::LeastConn,
            Balance::P2c => Balancer::P2c,
            Balance::PeakEwma => Balancer::PeakEwma,
            Balance::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_weighted_schedule(&backends.iter().map(|b| b.weight()).collect::<Vec<_>>()),
                cursor,
            },
            Balance::Hash => Balancer::Hash(Ring::new(
                &backends.iter().map(|b| (b.address(), b.weight())).collect::<Vec<_>>(),
            )),
        }
    }

    /// The index of the backend to send to, or `None` when no backend can
    /// take a request now (the caller queues).
    pub fn pick<B: Load>(&self, backends: &[Arc<B>], cx: &mut PickContext<'_>) -> Option<usize> {
        match self {
            Balancer::LeastConn => least_conn(backends, cx),
            Balancer::P2c => two_choices(backends, cx, |a, b| load_cmp(a, b).is_le()),
            Balancer::PeakEwma => two_choices(backends, cx, |a, b| ewma_cost(a) <= ewma_cost(b)),
            Balancer::RoundRobin { schedule, cursor } => {
                let n = schedule.len();
                if n == 0 {
                    return None;
                }
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| schedule[(start + k) % n] as usize)
                    .find(|&i| i < backends.len() && eligible(backends, i, cx.exclude))
            }
            Balancer::Hash(ring) => match cx.hash {
                Some(key) if !ring.is_empty() => ring
                    .walk(key)
                    .take(backends.len() * 4 + 16)
                    .find(|&i| i < backends.len() && eligible(backends, i, cx.exclude))
                    .or_else(|| least_conn(backends, cx)),
                _ => least_conn(backends, cx),
            },
        }
    }
}

/// Fewest in-flight per unit of weight; ties broken uniformly at random
/// (reservoir sampling), never "always the first".
fn least_conn<B: Load>(backends: &[Arc<B>], cx: &mut PickContext<'_>) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut ties = 0u32;
    for i in 0..backends.len() {
        if !eligible(backends, i, cx.exclude) {
            continue;
        }
        match best {
            None => {
                best = Some(i);
                ties = 1;
            }
            Some(b) => match load_cmp(&*backends[i], &*backends[b]) {
                std::cmp::Ordering::Less => {
                    best = Some(i);
                    ties = 1;
                }
                std::cmp::Ordering::Equal => {
                    ties += 1;
                    if cx.rng.u32(..ties) == 0 {
                        best = Some(i);
                    }
                }
                std::cmp::Ordering::Greater => {}
            },
        }
    }
    best
}

/// Power of two choices: two distinct random candidates, `better(a, b)`
/// decides. Falls back to a least-loaded scan when the draws keep hitting
/// backends that cannot take a request.
fn two_choices<B: Load>(
    backends: &[Arc<B>],
    cx: &mut PickContext<'_>,
    better: impl Fn(&B, &B) -> bool,
) -> Option<usize> {
    let n = backends.len();
    if n < 2 {
        return (n == 1 && eligible(backends, 0, cx.exclude)).then_some(0);
    }
    for _ in 0..P2C_DRAWS {
        let (a, b) = p2c_candidates(cx.rng, n);
        match (eligible(backends, a, cx.exclude), eligible(backends, b, cx.exclude)) {
            (true, true) => return Some(if better(&backends[a], &backends[b]) { a } else { b }),
            (true, false) => return Some(a),
            (false, true) => return Some(b),
            (false, false) => {}
        }
    }
    least_conn(backends, cx)
}

/// nginx's smooth weighted round-robin, unrolled into a schedule of backend
/// indices (weights 5,1,1 give a,a,b,a,c,a,a: spread, not bunched).
pub(crate) fn smooth_weighted_schedule(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w.max(1)));
    let mut w: Vec<i64> = weights.iter().map(|&x| i64::from(x.max(1) / g)).collect();
    let total: u64 = w.iter().map(|&x| x as u64).sum();
    if total > MAX_SCHEDULE {
        let scale = MAX_SCHEDULE as f64 / total as f64;
        for x in &mut w {
            *x = ((*x as f64 * scale) as i64).max(1);
        }
    }
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_round_robin_spreads_heavy_backends() {
        assert_eq!(smooth_weighted_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted_schedule(&[2, 2]), vec![0, 1]);
    }
}
