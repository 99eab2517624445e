//! The training and validation corpus: families of traffic, each a seeded
//! generator whose seed draws the *shape* (sizes, timings, decay) as well as
//! the noise, so two seeds of one family are different days of the same
//! kind of shop, not the same day twice.
//!
//! Tooling, pure. Every family takes a base rate (requests per second, the
//! quiet level) and a seed. The corpus (`corpus.rs`) draws base rates from a
//! wide range so small pools (one or two backends) and large ones are both
//! covered, and keeps the seeds of its validation set apart from the ones
//! the policy is tuned on.
//!
//! | family | what |
//! | --- | --- |
//! | `ramp-slow` | a 2-8 h ramp to 3-10x and back |
//! | `ramp-fast` | 2-3 ramps of 1-15 min to 4-15x, held 20-60 min |
//! | `sale-announced` | 4 days, a daily sale at the same time, 3-15x |
//! | `sale-unannounced` | 2 days, 3-5 sales at random times, 3-15x, 10-90 min |
//! | `spike` | a day with surprise spikes of 3x, 10x and 30x, decaying in 1-20 min |
//! | `bot-storm` | a day with episodes of short (30 s-3 min), dense (10-30x), repeated storms |
//! | `onoff` | heavy-tailed (Pareto) on/off bursts at 3-10x |
//! | `diurnal-weekly` | 14 days: the daily curve, a weekly cycle, drift of 1-3 %/day |
//! | `quiet-rare` | 7 quiet days with 2-5 rare peaks of 5-20x |
//! | `slow-deploy` | a day in which the service time doubles or triples for 20-60 min, 2-3 times |

use std::f64::consts::PI;

use super::scenario::{Trace, SECONDS_PER_DAY};

/// Every family, by name.
pub const FAMILIES: [&str; 10] = [
    "ramp-slow",
    "ramp-fast",
    "sale-announced",
    "sale-unannounced",
    "spike",
    "bot-storm",
    "onoff",
    "diurnal-weekly",
    "quiet-rare",
    "slow-deploy",
];

/// One trace of `family` at `base` requests per second (the quiet level).
pub fn generate(family: &str, base: f64, seed: u64) -> Option<Trace> {
    let mut g = Gen::new(family, seed);
    match family {
        "ramp-slow" => g.ramp_slow(base),
        "ramp-fast" => g.ramp_fast(base),
        "sale-announced" => g.sale_announced(base),
        "sale-unannounced" => g.sale_unannounced(base),
        "spike" => g.spike(base),
        "bot-storm" => g.bot_storm(base),
        "onoff" => g.onoff(base),
        "diurnal-weekly" => g.diurnal_weekly(base),
        "quiet-rare" => g.quiet_rare(base),
        "slow-deploy" => g.slow_deploy(base),
        _ => return None,
    }
    Some(g.trace)
}

/// A shop's daily curve: quiet at night, a lunch bump, the evening peak;
/// mean about 1. `shift` moves it by hours (shops in other time zones).
fn daily(second_of_day: usize, shift: f64) -> f64 {
    let h = (second_of_day as f64 / 3600.0 - shift).rem_euclid(24.0);
    let base = 0.55 - 0.45 * (2.0 * PI * (h - 3.0) / 24.0).cos();
    let lunch = 0.25 * (-((h - 12.5) / 1.2).powi(2)).exp();
    let evening = 0.45 * (-((h - 20.0) / 2.0).powi(2)).exp();
    base + lunch + evening
}

struct Gen {
    rng: fastrand::Rng,
    trace: Trace,
    /// Rate multiplier per second (the shape), filled before the noise.
    shape: Vec<f64>,
}

impl Gen {
    fn new(family: &str, seed: u64) -> Gen {
        Gen {
            rng: fastrand::Rng::with_seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ family.len() as u64),
            trace: Trace::plain(format!("{family}#{seed}"), Vec::new()),
            shape: Vec::new(),
        }
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + self.rng.f64() * (hi - lo)
    }

    fn secs(&mut self, lo: f64, hi: f64) -> usize {
        self.uniform(lo, hi).round() as usize
    }

    /// Turns the shape into noisy arrivals: Poisson-like per second, with a
    /// slowly wandering extra factor (`wander` = its relative size) so real
    /// traffic's burstiness above Poisson is there too.
    fn finish(&mut self, base: f64, wander: f64) {
        let mut drift = 1.0f64;
        let n = self.shape.len();
        let mut arrivals = Vec::with_capacity(n);
        for i in 0..n {
            if i % 10 == 0 {
                // A mean-reverting random walk, sampled every 10 s.
                drift += 0.2 * (1.0 - drift) + wander * (self.rng.f64() - 0.5);
                drift = drift.clamp(1.0 - 3.0 * wander, 1.0 + 3.0 * wander);
            }
            let rate = (base * self.shape[i] * drift).max(0.0);
            arrivals.push(noisy(&mut self.rng, rate));
        }
        self.trace.arrivals = arrivals;
    }

    fn flat(&mut self, secs: usize, level: f64) {
        self.shape.extend(std::iter::repeat_n(level, secs));
    }

    fn ramp(&mut self, secs: usize, from: f64, to: f64) {
        for i in 0..secs {
            self.shape.push(from + (to - from) * (i as f64 / secs.max(1) as f64));
        }
    }

    fn mark_step(&mut self, at: usize, secs: usize) {
        self.trace.steps.push(at);
        self.trace.falls.push(at + secs);
        self.trace.surprises.push(at..at + secs + 600);
    }

    fn ramp_slow(&mut self, base: f64) {
        let peak = self.uniform(3.0, 10.0);
        let up = self.secs(2.0 * 3600.0, 8.0 * 3600.0);
        let hold = self.secs(1800.0, 3600.0);
        self.flat(1800, 1.0);
        self.ramp(up, 1.0, peak);
        self.flat(hold, peak);
        self.ramp(up / 2, peak, 1.0);
        self.flat(1800, 1.0);
        self.finish(base, 0.05);
    }

    fn ramp_fast(&mut self, base: f64) {
        self.flat(1800, 1.0);
        for _ in 0..self.rng.usize(2..=3) {
            let peak = self.uniform(4.0, 15.0);
            let up = self.secs(60.0, 900.0);
            let hold = self.secs(1200.0, 3600.0);
            let down = self.secs(60.0, 600.0);
            let at = self.shape.len();
            self.ramp(up, 1.0, peak);
            self.flat(hold, peak);
            self.ramp(down, peak, 1.0);
            self.mark_step(at, up + hold);
            let gap = self.secs(1800.0, 3600.0);
            self.flat(gap, 1.0);
        }
        self.finish(base, 0.05);
    }

    fn sale_announced(&mut self, base: f64) {
        let days = 4;
        let size = self.uniform(3.0, 15.0);
        let start = self.secs(9.0 * 3600.0, 21.0 * 3600.0);
        let length = self.secs(1800.0, 7200.0);
        let shift = self.uniform(-2.0, 2.0);
        for day in 0..days {
            let at = day * SECONDS_PER_DAY + start;
            self.trace.sales.push(at);
            if day == 0 {
                self.trace.surprises.push(at..at + length + 600);
            }
            for s in 0..SECONDS_PER_DAY {
                let in_sale = (start..start + length).contains(&s);
                // A minute's ramp into the sale: shoppers arrive at once.
                let k = if in_sale {
                    let into = (s - start) as f64;
                    1.0 + (size - 1.0) * (into / 60.0).min(1.0)
                } else {
                    1.0
                };
                self.shape.push(daily(s, shift) * k);
            }
        }
        self.finish(base, 0.05);
    }

    fn sale_unannounced(&mut self, base: f64) {
        let days = 2;
        let shift = self.uniform(-2.0, 2.0);
        for s in 0..days * SECONDS_PER_DAY {
            self.shape.push(daily(s % SECONDS_PER_DAY, shift));
        }
        let n = self.rng.usize(3..=5);
        for _ in 0..n {
            let size = self.uniform(3.0, 15.0);
            let length = self.secs(600.0, 5400.0);
            let ramp = self.secs(60.0, 300.0);
            let at = self.rng.usize(3600..days * SECONDS_PER_DAY - length - 7200);
            for i in 0..length + 1800 {
                let k = if i < ramp {
                    1.0 + (size - 1.0) * i as f64 / ramp as f64
                } else if i < length {
                    size
                } else {
                    // Tailing off after the sale.
                    1.0 + (size - 1.0) * (-((i - length) as f64) / 300.0).exp()
                };
                self.shape[at + i] *= k;
            }
            self.mark_step(at, length);
        }
        self.finish(base, 0.05);
    }

    fn spike(&mut self, base: f64) {
        let shift = self.uniform(-2.0, 2.0);
        for s in 0..SECONDS_PER_DAY {
            self.shape.push(daily(s, shift));
        }
        for size in [3.0, 10.0, 30.0] {
            let half_life = self.uniform(60.0, 1200.0);
            let at = self.rng.usize(3600..SECONDS_PER_DAY - 4 * 3600);
            let length = (half_life * 6.0) as usize;
            for i in 0..length {
                self.shape[at + i] *= 1.0 + (size - 1.0) * 0.5f64.powf(i as f64 / half_life);
            }
            self.mark_step(at, (half_life * 2.0) as usize);
        }
        self.finish(base, 0.05);
    }

    fn bot_storm(&mut self, base: f64) {
        let shift = self.uniform(-2.0, 2.0);
        for s in 0..SECONDS_PER_DAY {
            self.shape.push(daily(s, shift));
        }
        for _ in 0..2 {
            let episode_start = self.rng.usize(3600..SECONDS_PER_DAY - 7 * 3600);
            let episode = self.secs(2.0 * 3600.0, 6.0 * 3600.0);
            let every = self.secs(600.0, 3600.0);
            let mut at = episode_start;
            while at < episode_start + episode {
                let size = self.uniform(10.0, 30.0);
                let length = self.secs(30.0, 180.0);
                for i in 0..length {
                    self.shape[at + i] *= size;
                }
                self.mark_step(at, length);
                at += every + self.rng.usize(..every / 2 + 1);
            }
        }
        self.finish(base, 0.05);
    }

    fn onoff(&mut self, base: f64) {
        let level = self.uniform(3.0, 10.0);
        let total = SECONDS_PER_DAY;
        let mut on = false;
        while self.shape.len() < total {
            // Pareto (alpha 1.5) durations: mostly short, sometimes long.
            let u = self.rng.f64().max(1e-9);
            let scale = if on { 60.0 } else { 300.0 };
            let length = ((scale * u.powf(-1.0 / 1.5)) as usize).clamp(5, 6 * 3600);
            let at = self.shape.len();
            self.flat(length, if on { level } else { 1.0 });
            if on {
                self.mark_step(at, length);
            }
            on = !on;
        }
        self.shape.truncate(total);
        self.finish(base, 0.1);
    }

    fn diurnal_weekly(&mut self, base: f64) {
        let days = 14;
        let shift = self.uniform(-2.0, 2.0);
        let weekend = self.uniform(0.7, 1.3);
        let growth = self.uniform(1.01, 1.03);
        for day in 0..days {
            let week = if day % 7 >= 5 { weekend } else { 1.0 };
            let drift = growth.powi(day);
            for s in 0..SECONDS_PER_DAY {
                self.shape.push(daily(s, shift) * week * drift);
            }
        }
        self.finish(base, 0.05);
    }

    fn quiet_rare(&mut self, base: f64) {
        let days = 7;
        let shift = self.uniform(-2.0, 2.0);
        for s in 0..days * SECONDS_PER_DAY {
            self.shape.push(daily(s % SECONDS_PER_DAY, shift));
        }
        for _ in 0..self.rng.usize(2..=5) {
            let size = self.uniform(5.0, 20.0);
            let length = self.secs(900.0, 3600.0);
            let at = self.rng.usize(3600..days * SECONDS_PER_DAY - length - 3600);
            for i in 0..length {
                self.shape[at + i] *= size;
            }
            self.mark_step(at, length);
        }
        self.finish(base, 0.05);
    }

    fn slow_deploy(&mut self, base: f64) {
        let shift = self.uniform(-2.0, 2.0);
        for s in 0..SECONDS_PER_DAY {
            self.shape.push(daily(s, shift));
        }
        let mut factor = vec![1.0f32; SECONDS_PER_DAY];
        for _ in 0..self.rng.usize(2..=3) {
            let k = self.uniform(2.0, 3.0) as f32;
            let length = self.secs(1200.0, 3600.0);
            let at = self.rng.usize(3600..SECONDS_PER_DAY - length - 3600);
            for f in &mut factor[at..at + length] {
                *f = k;
            }
            self.mark_step(at, length);
        }
        self.trace.service_factor = factor;
        self.finish(base, 0.05);
    }
}

/// Poisson-like noise: a normal draw with the arrivals' own deviation.
fn noisy(rng: &mut fastrand::Rng, rate: f64) -> f64 {
    let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos();
    (rate + z * rate.sqrt()).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_generates_a_seeded_shape() {
        for family in FAMILIES {
            let a = generate(family, 100.0, 1).unwrap();
            let b = generate(family, 100.0, 1).unwrap();
            let c = generate(family, 100.0, 2).unwrap();
            assert_eq!(a.arrivals, b.arrivals, "{family}: seeded");
            assert_ne!(a.arrivals, c.arrivals, "{family}: another seed, another trace");
            assert!(a.arrivals.len() >= 3600, "{family}");
            let mean = a.mean_rate();
            assert!(mean > 50.0 && mean < 2000.0, "{family}: mean {mean}");
            assert!(a.arrivals.iter().all(|x| x.is_finite() && *x >= 0.0), "{family}");
        }
        assert!(generate("nope", 1.0, 1).is_none());
    }

    #[test]
    fn a_slow_deploy_changes_the_service_time_not_the_load() {
        let t = generate("slow-deploy", 100.0, 3).unwrap();
        assert_eq!(t.service_factor.len(), t.arrivals.len());
        assert!(t.service_factor.iter().any(|&f| f >= 2.0));
        assert!(t.service_factor.iter().filter(|&&f| f == 1.0).count() > t.arrivals.len() / 2);
    }
}
