//! The referee: an exact per-request event simulation of the pool, for
//! traces short enough to afford it (hours, not weeks).
//!
//! Tooling, pure (seeded). Each second's arrivals are placed uniformly at
//! random within the second (a Poisson process given the count); each gets
//! a service time drawn from the chosen distribution; `servers` identical
//! servers take the oldest waiter first, as tidegate's admission does. A
//! request breaks the SLO when its own queue wait exceeds it. When the pool
//! shrinks, requests in service finish and no new one starts until the
//! busy count is below the new size (a draining backend).
//!
//! The fluid model (`model.rs`) must agree with this on the same policy
//! and trace; `tidegate simulate --model referee` compares the two.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::model::{Memo, Queueing, Second, ALL_NORMAL};

/// How service times are distributed around their mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceDist {
    /// Exponential (coefficient of variation 1): the M/M/c assumption.
    Exponential,
    /// Every request takes exactly the mean.
    Fixed,
    /// Log-normal with this coefficient of variation.
    LogNormal(f64),
}

impl ServiceDist {
    /// `exp`, `fixed`, or a coefficient of variation such as `0.5`.
    pub fn parse(text: &str) -> Result<ServiceDist, String> {
        match text {
            "exp" | "exponential" => Ok(ServiceDist::Exponential),
            "fixed" | "deterministic" => Ok(ServiceDist::Fixed),
            cv => cv
                .parse::<f64>()
                .ok()
                .filter(|c| c.is_finite() && *c > 0.0 && *c <= 10.0)
                .map(ServiceDist::LogNormal)
                .ok_or_else(|| format!("`{text}`: expected exp, fixed or a coefficient of variation in (0, 10]")),
        }
    }

    fn draw(self, mean: f64, rng: &mut fastrand::Rng) -> f64 {
        match self {
            ServiceDist::Exponential => -mean * rng.f64().max(1e-300).ln(),
            ServiceDist::Fixed => mean,
            ServiceDist::LogNormal(cv) => {
                let sigma2 = (1.0 + cv * cv).ln();
                let mu = mean.ln() - sigma2 / 2.0;
                let (u1, u2) = (rng.f64().max(1e-300), rng.f64());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (mu + sigma2.sqrt() * z).exp()
            }
        }
    }
}

/// What the requests that started service in one second waited and took.
#[derive(Default)]
struct Waits {
    /// Per class, in lane order.
    sum: [f64; 3],
    count: [f64; 3],
    service_sum: f64,
    service_sq: f64,
}

/// Nanoseconds, for an ordered event heap.
type Ns = u64;

fn ns(seconds: f64) -> Ns {
    (seconds * 1e9).max(0.0) as Ns
}

/// The exact simulation's state between seconds.
pub(crate) struct Des {
    rng: fastrand::Rng,
    dist: ServiceDist,
    slo_ns: Ns,
    /// Arrival times of the waiting requests per priority lane (critical,
    /// normal, sheddable), oldest first.
    lanes: [VecDeque<Ns>; 3],
    /// Completion times of the requests in service.
    busy: BinaryHeap<Reverse<Ns>>,
}

impl Des {
    pub(crate) fn new(slo: f64, dist: ServiceDist, seed: u64) -> Des {
        Des {
            rng: fastrand::Rng::with_seed(seed),
            dist,
            slo_ns: ns(slo),
            lanes: Default::default(),
            busy: BinaryHeap::new(),
        }
    }

    /// Starts waiters while there are free servers, at `now`.
    fn start_waiters(&mut self, now: Ns, servers: u64, service: f64, out: &mut Second, waits: &mut Waits) {
        while (self.busy.len() as u64) < servers {
            // The highest lane first, then by arrival, as the pool's queue.
            let Some((class, arrived)) = (0..3).find_map(|k| self.lanes[k].pop_front().map(|a| (k, a))) else {
                break;
            };
            let wait = now - arrived;
            if wait > self.slo_ns {
                out.violations += 1.0;
                out.class_violations[class] += 1.0;
            }
            waits.sum[class] += wait as f64 / 1e9;
            waits.count[class] += 1.0;
            let drawn = self.dist.draw(service, &mut self.rng);
            waits.service_sum += drawn;
            waits.service_sq += drawn * drawn;
            self.busy.push(Reverse(now + ns(drawn)));
        }
    }
}

/// The class (lane index) a uniform draw `u` falls in under `mix`.
fn class_of(u: f64, mix: [f64; 3]) -> usize {
    if u < mix[0] {
        0
    } else if u < mix[0] + mix[1] {
        1
    } else {
        2
    }
}

impl Queueing for Des {
    fn second(
        &mut self,
        t: usize,
        servers: u64,
        arrivals: f64,
        service: f64,
        mix: [f64; 3],
        _memo: &mut Memo,
    ) -> Second {
        let start = t as Ns * 1_000_000_000;
        let end = start + 1_000_000_000;
        let count = arrivals.floor() as u64 + u64::from(self.rng.f64() < arrivals.fract());
        let mut times: Vec<Ns> = (0..count).map(|_| start + self.rng.u64(..1_000_000_000)).collect();
        times.sort_unstable();
        // A class per arrival, drawn only for a mixed trace (a plain one
        // keeps its random sequence).
        let classes: Vec<usize> = if mix == ALL_NORMAL {
            vec![1; times.len()]
        } else {
            times.iter().map(|_| class_of(self.rng.f64(), mix)).collect()
        };
        let mut out = Second {
            requests: count as f64,
            ..Second::default()
        };
        for &k in &classes {
            out.class_requests[k] += 1.0;
        }
        let mut waits = Waits::default();
        // The pool may have grown at the second's start.
        self.start_waiters(start, servers, service, &mut out, &mut waits);
        let mut next_arrival = times.into_iter().zip(classes).peekable();
        loop {
            let completion = self.busy.peek().map(|r| r.0).filter(|&c| c < end);
            let arrival = next_arrival.peek().map(|&(a, _)| a);
            match (completion, arrival) {
                (Some(c), Some(a)) if c <= a => {
                    self.busy.pop();
                    out.completed += 1.0;
                    self.start_waiters(c, servers, service, &mut out, &mut waits);
                }
                (_, Some(a)) => {
                    if let Some((_, class)) = next_arrival.next() {
                        self.lanes[class].push_back(a);
                    }
                    self.start_waiters(a, servers, service, &mut out, &mut waits);
                }
                (Some(c), None) => {
                    self.busy.pop();
                    out.completed += 1.0;
                    self.start_waiters(c, servers, service, &mut out, &mut waits);
                }
                (None, None) => break,
            }
        }
        // A waiter is counted when it starts (one still waiting when the
        // trace ends is not counted at all).
        out.in_flight = self.busy.len() as f64;
        out.queued = self.lanes.iter().map(VecDeque::len).sum::<usize>() as f64;
        let mean = |sum: f64, count: f64| if count > 0.0 { sum / count } else { 0.0 };
        let started: f64 = waits.count.iter().sum();
        out.queue_wait = mean(waits.sum.iter().sum(), started);
        out.class_wait = std::array::from_fn(|k| mean(waits.sum[k], waits.count[k]));
        if started >= 20.0 {
            let mean = waits.service_sum / started;
            out.service_cv2 = Some((waits.service_sq / started - mean * mean).max(0.0) / (mean * mean));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The long-run share of requests waiting longer than the SLO on a
    /// steady M/M/c pool matches Erlang C.
    #[test]
    fn a_steady_pool_matches_erlang_c() {
        let (servers, rate, service, slo) = (16u64, 700.0, 0.02, 0.01);
        let mut des = Des::new(slo, ServiceDist::Exponential, 42);
        let mut memo = Memo::default();
        let (mut requests, mut violations) = (0.0, 0.0);
        for t in 0..3000 {
            let s = des.second(t, servers, rate, service, ALL_NORMAL, &mut memo);
            requests += s.requests;
            violations += s.violations;
        }
        let measured = violations / requests;
        let expected = crate::autoscale::erlang::wait_exceeds(servers, rate, service, slo);
        assert!(
            (measured - expected).abs() < 0.15 * expected,
            "measured {measured:.4}, Erlang C {expected:.4}"
        );
    }

    #[test]
    fn an_overloaded_pool_queues_and_drains() {
        let mut des = Des::new(0.1, ServiceDist::Fixed, 1);
        let mut memo = Memo::default();
        // 10 servers x 10 ms = 1000 req/s offered 2000: a backlog of ~1000.
        let s = des.second(0, 10, 2000.0, 0.01, ALL_NORMAL, &mut memo);
        assert!((s.completed - 1000.0).abs() < 20.0, "{s:?}");
        assert!((s.queued - 1000.0).abs() < 20.0, "{s:?}");
        // Then nothing arrives: it drains in about a second.
        let s = des.second(1, 10, 0.0, 0.01, ALL_NORMAL, &mut memo);
        assert!(s.queued < 20.0, "{s:?}");
        assert!(s.violations > 800.0, "those waited past 100 ms: {s:?}");
    }

    #[test]
    fn service_distributions_parse() {
        assert_eq!(ServiceDist::parse("exp"), Ok(ServiceDist::Exponential));
        assert_eq!(ServiceDist::parse("fixed"), Ok(ServiceDist::Fixed));
        assert_eq!(ServiceDist::parse("0.5"), Ok(ServiceDist::LogNormal(0.5)));
        assert!(ServiceDist::parse("-1").is_err());
    }
}
