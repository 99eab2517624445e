//! Latency histograms cheap enough for the data path.
//!
//! Data path records (atomics only, no lock, no allocation); the control
//! path (`/stats`, `/metrics`) reads and merges. Cumulative since the owner
//! (backend, pool, queue) was created. Two shapes:
//! - [`LatencyHistogram`]: log-linear buckets (8 per power of two, so a
//!   reported percentile is within ~6 % of the true value), for `/stats`
//!   percentiles;
//! - [`SecondsHistogram`]: the Prometheus buckets of
//!   [`crate::telemetry::SECONDS_BUCKETS`] plus sum and count, exact for
//!   `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::telemetry::SECONDS_BUCKETS;

const LINEAR: usize = 16;
const SUB_BITS: u32 = 3;
const SUBS: usize = 1 << SUB_BITS;
/// Up to 2^40 µs (about 12 days) in range; longer samples land in the last.
const BUCKETS: usize = LINEAR + (40 - 4) * SUBS;

pub(crate) struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn index(us: u64) -> usize {
    if us < LINEAR as u64 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros();
    let sub = ((us >> (e - SUB_BITS)) as usize) & (SUBS - 1);
    (LINEAR + (e as usize - 4) * SUBS + sub).min(BUCKETS - 1)
}

/// Midpoint of a bucket, in µs.
fn value(idx: usize) -> f64 {
    if idx < LINEAR {
        return idx as f64;
    }
    let e = (idx - LINEAR) / SUBS + 4;
    let sub = (idx - LINEAR) % SUBS;
    let width = 1u64 << (e as u32 - SUB_BITS);
    let lower = ((SUBS + sub) as u64) * width;
    lower as f64 + (width as f64 - 1.0) / 2.0
}

impl LatencyHistogram {
    #[inline]
    pub(crate) fn record_ns(&self, ns: u64) {
        self.buckets[index(ns / 1000)].fetch_add(1, Ordering::Relaxed);
    }

    fn counts(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed))
    }
}

/// Percentiles (`qs` in 0..=1) over several histograms merged, in
/// milliseconds; `None` when there are no samples.
pub(crate) fn percentiles_ms<'a>(
    hists: impl IntoIterator<Item = &'a LatencyHistogram>,
    qs: &[f64],
) -> Option<Vec<f64>> {
    let mut merged = [0u64; BUCKETS];
    for h in hists {
        for (m, c) in merged.iter_mut().zip(h.counts()) {
            *m += c;
        }
    }
    let total: u64 = merged.iter().sum();
    if total == 0 {
        return None;
    }
    Some(
        qs.iter()
            .map(|q| {
                let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
                let mut seen = 0;
                let idx = merged
                    .iter()
                    .position(|&c| {
                        seen += c;
                        seen >= rank
                    })
                    .unwrap_or(BUCKETS - 1);
                value(idx) / 1000.0
            })
            .collect(),
    )
}

/// Bucket bounds of [`SECONDS_BUCKETS`] in nanoseconds.
const BOUNDS_NS: [u64; SECONDS_BUCKETS.len()] = {
    let mut out = [0u64; SECONDS_BUCKETS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = (SECONDS_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A Prometheus histogram kept in atomics: per-bucket counts (not yet
/// cumulative), the count and the sum in nanoseconds.
#[derive(Default)]
pub(crate) struct SecondsHistogram {
    buckets: [AtomicU64; SECONDS_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl SecondsHistogram {
    #[inline]
    pub(crate) fn record_ns(&self, ns: u64) {
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        if i < BOUNDS_NS.len() {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative bucket counts (`le` each bound), the count and the sum in
    /// seconds, for the exposition format.
    pub(crate) fn read(&self) -> ([u64; SECONDS_BUCKETS.len()], u64, f64) {
        let mut cumulative = [0u64; SECONDS_BUCKETS.len()];
        let mut running = 0;
        for (c, b) in cumulative.iter_mut().zip(&self.buckets) {
            running += b.load(Ordering::Relaxed);
            *c = running;
        }
        let count = self.count.load(Ordering::Relaxed).max(running);
        (cumulative, count, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in [0u64, 1, 15, 16, 17, 100, 1_000, 12_345, 1_000_000, 60_000_000] {
            let i = index(us);
            assert!(i >= last, "{us}");
            last = i;
            let v = value(i);
            assert!((v - us as f64).abs() <= (us as f64 * 0.07).max(0.5), "{us} -> {v}");
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let h = LatencyHistogram::default();
        for ms in 1..=100u64 {
            h.record_ns(ms * 1_000_000);
        }
        let p = percentiles_ms([&h], &[0.5, 0.9, 0.99]).unwrap();
        for (got, want) in p.iter().zip([50.0, 90.0, 99.0]) {
            assert!((got - want).abs() / want < 0.07, "{got} vs {want}");
        }
        assert!(percentiles_ms([&LatencyHistogram::default()], &[0.5]).is_none());
    }

    #[test]
    fn seconds_buckets_are_exact_at_their_bounds() {
        let h = SecondsHistogram::default();
        h.record_ns(1_000_000); // exactly 1 ms: le 0.001
        h.record_ns(1_000_001); // just above: le 0.0025
        h.record_ns(40_000_000_000); // beyond 30 s: only +Inf
        let (cumulative, count, sum) = h.read();
        assert_eq!(cumulative[0], 1);
        assert_eq!(cumulative[1], 2);
        assert_eq!(cumulative[13], 2);
        assert_eq!(count, 3);
        assert!((sum - 40.002000001).abs() < 1e-9, "{sum}");
    }
}
