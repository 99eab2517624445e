//! The autoscaler's input: one sample per pool per second, kept in a
//! bounded window that the policies read.
//!
//! Pure data. The live loop fills it from the pool's atomics (in-flight +
//! queued, arrivals since the last sample); the simulator fills it from its
//! model. Both then call the same `policy::decide`.

use std::collections::VecDeque;

/// One second of a pool, as the proxy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    /// Seconds since the start (of the process or the simulation).
    pub(crate) t: u64,
    /// Requests that arrived during the second.
    pub(crate) arrivals: f64,
    /// Requests that finished during the second (throughput: under
    /// overload it is capacity, not arrivals).
    pub(crate) completed: f64,
    /// In flight + queued at the end of the second (Knative's concurrency).
    pub(crate) concurrency: f64,
    /// Queued at the end of the second.
    pub(crate) queued: f64,
    /// Mean seconds waited by the requests that left the queue during the
    /// second (0 when none did).
    pub(crate) queue_wait: f64,
    /// The same per priority class (critical, normal, sheddable): the lanes
    /// share one pool, so a standing queue shows as sheddable waiting while
    /// critical does not.
    pub(crate) class_wait: [f64; 3],
    /// Squared coefficient of variation of the service times completed in
    /// the second (`None`: not measured; exponential, 1, is assumed).
    pub(crate) service_cv2: Option<f64>,
}

/// The last `capacity` samples, oldest first.
#[derive(Debug, Clone)]
pub(crate) struct History {
    samples: VecDeque<Sample>,
    capacity: usize,
}

impl History {
    pub(crate) fn new(capacity: usize) -> History {
        History {
            samples: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub(crate) fn push(&mut self, s: Sample) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    pub(crate) fn last(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Samples with `t > now - secs`.
    fn window(&self, now: u64, secs: u64) -> impl Iterator<Item = &Sample> {
        let from = now.saturating_sub(secs);
        self.samples
            .iter()
            .rev()
            .take_while(move |s| s.t > from || (from == 0 && s.t == 0))
    }

    /// Calls `f` for each sample of the last `secs` seconds, newest first.
    pub(crate) fn for_each(&self, now: u64, secs: u64, mut f: impl FnMut(&Sample)) {
        for s in self.window(now, secs) {
            f(s);
        }
    }

    /// Mean of `f` over the last `secs` seconds (0 with no samples).
    pub(crate) fn mean(&self, now: u64, secs: u64, f: impl Fn(&Sample) -> f64) -> f64 {
        let (sum, n) = self.window(now, secs).fold((0.0, 0u32), |(s, n), x| (s + f(x), n + 1));
        if n == 0 {
            0.0
        } else {
            sum / f64::from(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: u64, arrivals: f64) -> Sample {
        Sample {
            t,
            arrivals,
            completed: arrivals,
            concurrency: arrivals / 10.0,
            queued: 0.0,
            queue_wait: 0.0,
            class_wait: [0.0; 3],
            service_cv2: None,
        }
    }

    #[test]
    fn windows_cover_the_last_seconds_only() {
        let mut h = History::new(100);
        for t in 1..=10 {
            h.push(s(t, t as f64 * 10.0));
        }
        assert_eq!(h.mean(10, 2, |x| x.arrivals), 95.0);
        assert_eq!(h.mean(10, 60, |x| x.arrivals), 55.0);
    }

    #[test]
    fn the_window_is_bounded() {
        let mut h = History::new(3);
        for t in 1..=10 {
            h.push(s(t, 1.0));
        }
        assert_eq!(h.samples.len(), 3);
        assert_eq!(h.last().unwrap().t, 10);
    }
}
