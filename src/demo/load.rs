//! The demo's built-in load generator: plays a short flash sale against the
//! proxy so the elastic pool can be watched growing and shrinking.
//!
//! Not on tidegate's data path: a client like any other, on loopback only,
//! bounded in time, stopping by itself. `workers` keep-alive connections each
//! pace their requests to share the phase's rate, with exponential gaps
//! (so arrivals are Poisson, as shoppers are, instead of 128 workers firing
//! in step); when the proxy queues, they wait (so the offered load never
//! runs away). One request in [`CHECKOUT_EVERY`] is a checkout (`/cart`,
//! the demo's critical route), the rest product pages (sheddable), and the
//! two are tallied apart. One product page in [`SALE_PAGE_EVERY`] is the
//! sale's item (`/products/sale`, the demo's cached route): the same bytes
//! for everyone, which the micro-cache answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

/// One stretch of the sale: `rate` requests per second for `length`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Phase {
    pub(crate) length: Duration,
    pub(crate) rate: f64,
}

/// The demo's quiet rate, requests per second: its sale (10x) keeps a
/// pool of 8-slot, 20 ms backends at six once the cache has answered the
/// sale's item page.
pub(crate) const QUIET_RATE: f64 = 180.0;

/// Quiet, the sale (10x), quiet again: about 100 seconds in all.
pub(crate) fn flash_sale() -> Vec<Phase> {
    flash_sale_at(QUIET_RATE)
}

/// The flash sale around a quiet rate of `base` requests per second.
pub(crate) fn flash_sale_at(base: f64) -> Vec<Phase> {
    let phase = |secs, rate| Phase {
        length: Duration::from_secs(secs),
        rate,
    };
    vec![phase(15, base), phase(40, 10.0 * base), phase(45, base)]
}

/// One request in this many is a checkout.
pub(crate) const CHECKOUT_EVERY: u64 = 20;
/// One product page in this many is the sale's item. (At one in three the
/// cache took a third of the sale off the backends and the pool peaked at
/// five: the demo is there to show a pool grow, so the item is one page of
/// several.)
pub(crate) const SALE_PAGE_EVERY: u64 = 10;

/// What a run did: browse (product pages) and checkout counted apart.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) checkout_ok: AtomicU64,
    pub(crate) checkout_failed: AtomicU64,
    /// Slowest checkout answer since the last [`Tally::take_slowest_checkout`], µs.
    slowest_checkout_us: AtomicU64,
}

impl Tally {
    fn record(&self, checkout: bool, ok: bool, took: Duration) {
        let counter = match (checkout, ok) {
            (false, true) => &self.ok,
            (false, false) => &self.failed,
            (true, true) => &self.checkout_ok,
            (true, false) => &self.checkout_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if checkout {
            self.slowest_checkout_us
                .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// The slowest checkout since the last call, and starts over.
    pub(crate) fn take_slowest_checkout(&self) -> Duration {
        Duration::from_micros(self.slowest_checkout_us.swap(0, Ordering::Relaxed))
    }
}

/// The phase in force `elapsed` into the run, or `None` when it is over.
pub(crate) fn phase_at(phases: &[Phase], elapsed: Duration) -> Option<Phase> {
    let mut start = Duration::ZERO;
    for p in phases {
        if elapsed < start + p.length {
            return Some(*p);
        }
        start += p.length;
    }
    None
}

/// Plays `phases` against `target` with `workers` connections; returns
/// when the last phase ends.
pub(crate) async fn play(target: SocketAddr, phases: Vec<Phase>, workers: usize, tally: Arc<Tally>) {
    let phases = Arc::new(phases);
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (phases, tally) = (Arc::clone(&phases), Arc::clone(&tally));
            tokio::spawn(async move {
                let mut conn = None;
                let mut n: u64 = 0;
                let mut rng = fastrand::Rng::with_seed(w as u64);
                while let Some(phase) = phase_at(&phases, started.elapsed()) {
                    let mean = workers as f64 / phase.rate.max(0.1);
                    let gap = Duration::from_secs_f64(exponential(&mut rng, mean));
                    let next = Instant::now() + gap;
                    if conn.is_none() {
                        conn = connect(target).await;
                    }
                    let checkout = (n + w as u64).is_multiple_of(CHECKOUT_EVERY);
                    let path = if checkout {
                        "/cart".to_string()
                    } else if n.is_multiple_of(SALE_PAGE_EVERY) {
                        "/products/sale".to_string()
                    } else {
                        format!("/products/{}", (n * 7 + w as u64) % 500)
                    };
                    let asked = Instant::now();
                    let ok = match conn.as_mut() {
                        Some(sender) => request(sender, &path).await,
                        None => false,
                    };
                    tally.record(checkout, ok, asked.elapsed());
                    if !ok {
                        conn = None;
                    }
                    n += 1;
                    tokio::time::sleep_until(next).await;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// An exponentially distributed gap with the given mean, capped at 10x.
fn exponential(rng: &mut fastrand::Rng, mean: f64) -> f64 {
    (-(1.0 - rng.f64()).ln() * mean).min(10.0 * mean)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(target: SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(target).await.ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn request(sender: &mut Sender, path: &str) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let req = http::Request::get(path)
        .header(http::header::HOST, "demo.shop")
        .body(Empty::new());
    let Ok(req) = req else { return false };
    match sender.send_request(req).await {
        Ok(resp) => resp.status().is_success() && resp.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_exponential_with_the_mean_asked_for() {
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 100_000;
        let gaps: Vec<f64> = (0..n).map(|_| exponential(&mut rng, 0.5)).collect();
        let mean = gaps.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        // P(gap > mean) = 1/e for an exponential.
        let over = gaps.iter().filter(|g| **g > 0.5).count() as f64 / n as f64;
        assert!((over - (-1.0f64).exp()).abs() < 0.01, "{over}");
    }

    #[test]
    fn phases_follow_each_other_and_end() {
        let p = flash_sale();
        assert_eq!(phase_at(&p, Duration::from_secs(1)).unwrap().rate, 180.0);
        assert_eq!(phase_at(&p, Duration::from_secs(20)).unwrap().rate, 1800.0);
        assert_eq!(phase_at(&p, Duration::from_secs(99)).unwrap().rate, 180.0);
        assert!(phase_at(&p, Duration::from_secs(100)).is_none());
    }

    #[test]
    fn a_sale_at_any_rate_is_ten_times_its_quiet_rate() {
        let rates: Vec<f64> = flash_sale_at(20.0).iter().map(|p| p.rate).collect();
        assert_eq!(rates, [20.0, 200.0, 20.0]);
        assert_eq!(flash_sale(), flash_sale_at(QUIET_RATE));
    }
}
