//! Erlang C: waiting in one FIFO queue in front of `c` identical servers
//! (M/M/c). The pool is modelled as `backends x max_concurrency` servers.
//!
//! Pure numerics, shared by the simulator's oracle and the default policy.
//! Erlang B is computed by its stable recurrence, so thousands of servers are
//! fine.

/// Probability that an arrival waits at all, for `c` servers offered `a`
/// erlangs (`a = arrival rate x mean service time`). 1 when `a >= c`.
pub(crate) fn erlang_c(c: u64, a: f64) -> f64 {
    if c == 0 || a >= c as f64 {
        return 1.0;
    }
    if a <= 0.0 {
        return 0.0;
    }
    let mut b = 1.0f64;
    for k in 1..=c {
        b = a * b / (k as f64 + a * b);
    }
    let c = c as f64;
    c * b / (c - a * (1.0 - b))
}

/// P(wait > t) in M/M/c: `C(c, a) * exp(-(c*mu - lambda) * t)`, with
/// `lambda` arrivals per second, `service` mean service time in seconds.
pub(crate) fn wait_exceeds(c: u64, lambda: f64, service: f64, t: f64) -> f64 {
    wait_exceeds_g(c, lambda, service, t, 1.0)
}

/// P(wait > t) in M/G/c by the Allen-Cunneen approximation: the M/M/c
/// tail with its decay slowed by `(1 + cv2) / 2`, where `cv2` is the
/// squared coefficient of variation of service times (1: exponential, the
/// M/M/c case; 0: fixed service, waits half as long; above 1: longer).
pub(crate) fn wait_exceeds_g(c: u64, lambda: f64, service: f64, t: f64, cv2: f64) -> f64 {
    let a = lambda * service;
    if c == 0 || a >= c as f64 {
        return 1.0;
    }
    let mu = 1.0 / service;
    let stretch = ((1.0 + cv2.max(0.0)) / 2.0).max(0.05);
    erlang_c(c, a) * (-(c as f64 * mu - lambda) * t / stretch).exp()
}

/// The fewest backends (each `slots` servers) for which an arrival waits
/// longer than `slo` seconds with probability at most `epsilon`.
pub(crate) fn backends_for(lambda: f64, service: f64, slots: u64, slo: f64, epsilon: f64) -> u64 {
    backends_for_g(lambda, service, slots, slo, epsilon, 1.0)
}

/// [`backends_for`] with service times of squared coefficient of variation
/// `cv2` (see [`wait_exceeds_g`]).
pub(crate) fn backends_for_g(lambda: f64, service: f64, slots: u64, slo: f64, epsilon: f64, cv2: f64) -> u64 {
    if lambda <= 0.0 || !lambda.is_finite() || service <= 0.0 {
        return 0;
    }
    let a = lambda * service;
    let mut n = ((a / slots as f64).floor() as u64).max(1);
    loop {
        if wait_exceeds_g(n * slots, lambda, service, slo, cv2) <= epsilon {
            return n;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_textbook_values() {
        // c = 2, a = 1: C = 1/3.
        assert!((erlang_c(2, 1.0) - 1.0 / 3.0).abs() < 1e-12);
        // c = 10, a = 8: C ~ 0.4092.
        assert!((erlang_c(10, 8.0) - 0.409_2).abs() < 1e-3);
        assert_eq!(erlang_c(4, 4.0), 1.0);
        assert_eq!(erlang_c(4, 0.0), 0.0);
    }

    #[test]
    fn stays_finite_for_large_pools() {
        let p = erlang_c(4096, 4000.0);
        assert!(p.is_finite() && p > 0.0 && p < 1.0, "{p}");
    }

    #[test]
    fn sizing_meets_the_bound_with_the_fewest_backends() {
        // 2000 req/s, 20 ms each, 8 slots per backend: 40 erlangs.
        let n = backends_for(2000.0, 0.02, 8, 0.1, 0.001);
        assert!(wait_exceeds(n * 8, 2000.0, 0.02, 0.1) <= 0.001);
        assert!(wait_exceeds((n - 1) * 8, 2000.0, 0.02, 0.1) > 0.001);
        assert!((5..=8).contains(&n), "{n}");
        assert_eq!(backends_for(0.0, 0.02, 8, 0.1, 0.001), 0);
    }

    #[test]
    fn fixed_service_needs_fewer_backends_and_variable_service_more() {
        let exp = backends_for_g(2000.0, 0.05, 8, 0.1, 0.001, 1.0);
        let fixed = backends_for_g(2000.0, 0.05, 8, 0.1, 0.001, 0.0);
        let wild = backends_for_g(2000.0, 0.05, 8, 0.1, 0.001, 4.0);
        assert!(fixed <= exp && exp <= wild, "{fixed} {exp} {wild}");
        assert!(wild > fixed);
        assert_eq!(
            backends_for_g(2000.0, 0.05, 8, 0.1, 0.001, 1.0),
            backends_for(2000.0, 0.05, 8, 0.1, 0.001)
        );
    }
}
