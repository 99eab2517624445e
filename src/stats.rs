//! Latency histograms cheap enough for the data path: one atomic add per
//! sample into log-linear buckets (8 per power of two, so a reported
//! percentile is within ~6 % of the true value).
//!
//! Data path records; the control path (stats endpoint) reads and merges.
//! Cumulative since the backend was created.

use std::sync::atomic::{AtomicU64, Ordering};

const LINEAR: usize = 16;
const SUB_BITS: u32 = 3;
const SUBS: usize = 1 << SUB_BITS;
/// Up to 2^40 µs (about 12 days) in range; longer samples land in the last.
const BUCKETS: usize = LINEAR + (40 - 4) * SUBS;

pub struct LatencyHistogram {
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
    pub fn record_ns(&self, ns: u64) {
        self.buckets[index(ns / 1000)].fetch_add(1, Ordering::Relaxed);
    }

    fn counts(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed))
    }
}

/// Percentiles (`qs` in 0..=1) over several histograms merged, in
/// milliseconds; `None` when there are no samples.
pub fn percentiles_ms<'a>(hists: impl IntoIterator<Item = &'a LatencyHistogram>, qs: &[f64]) -> Option<Vec<f64>> {
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
}
