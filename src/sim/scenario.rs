//! Traffic traces for the simulator: arrivals per second, from a CSV file
//! (`second,arrivals`, or `minute,requests` spread as a Poisson process
//! within each minute; either may instead carry a count per priority class,
//! `second,critical,normal,sheddable`) or generated (seeded, so runs
//! repeat; the corpus families are in `families.rs`).

use std::f64::consts::PI;

use super::model::ALL_NORMAL;

pub(crate) const SECONDS_PER_DAY: usize = 86_400;

/// A trace and what is known about it (for the report's per-event figures).
#[derive(Debug, Clone)]
pub struct Trace {
    pub(crate) name: String,
    pub(crate) arrivals: Vec<f64>,
    /// Seconds at which a step or spike starts (time to capacity).
    pub(crate) steps: Vec<usize>,
    /// Seconds at which a step or spike ends (time back to the oracle).
    pub(crate) falls: Vec<usize>,
    /// Seconds at which a recurring (predictable) sale starts.
    pub(crate) sales: Vec<usize>,
    /// Seconds no history could foresee (the unannounced steps and spikes,
    /// the first sale), plus ten minutes after each for the backlog.
    pub(crate) surprises: Vec<std::ops::Range<usize>>,
    /// The service time each second, as a multiple of the simulation's
    /// (a slow deploy); empty = 1 throughout.
    pub(crate) service_factor: Vec<f32>,
    /// Each second's share of arrivals per priority class (critical,
    /// normal, sheddable); empty = all `normal`.
    pub(crate) mix: Vec<[f32; 3]>,
}

impl Trace {
    /// A trace of `arrivals` with nothing else known about it.
    pub(crate) fn plain(name: impl Into<String>, arrivals: Vec<f64>) -> Trace {
        Trace {
            name: name.into(),
            arrivals,
            steps: vec![],
            falls: vec![],
            sales: vec![],
            surprises: vec![],
            service_factor: vec![],
            mix: vec![],
        }
    }

    /// The service-time multiple at second `t`.
    pub(crate) fn service_at(&self, t: usize) -> f64 {
        self.service_factor.get(t).map_or(1.0, |&f| f64::from(f))
    }

    /// The class mix at second `t` (critical, normal, sheddable).
    pub(crate) fn mix_at(&self, t: usize) -> [f64; 3] {
        self.mix.get(t).map_or(ALL_NORMAL, |m| m.map(f64::from))
    }

    /// Which seconds lie in steady load: those of a minute whose
    /// neighbourhood (five minutes either side) keeps its per-minute
    /// arrivals within [`STEADY_SPREAD`] (highest over lowest) and its
    /// service time unchanged. The "at steady load" targets
    /// (reversals and hook calls) are counted over these seconds.
    pub(crate) fn steady(&self) -> Vec<bool> {
        let n = self.arrivals.len();
        let range =
            |xs: &mut dyn Iterator<Item = f64>| xs.fold((f64::INFINITY, 0.0_f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
        // Per minute: mean arrivals, and the lowest and highest service factor.
        let minutes: Vec<(f64, (f64, f64))> = (0..n.div_ceil(60))
            .map(|m| {
                let seconds = m * 60..((m + 1) * 60).min(n);
                let rate = self.arrivals[seconds.clone()].iter().sum::<f64>() / seconds.len() as f64;
                (rate, range(&mut seconds.map(|t| self.service_at(t))))
            })
            .collect();
        let mut steady = vec![false; n];
        for m in 0..minutes.len() {
            let window = &minutes[m.saturating_sub(STEADY_REACH)..(m + STEADY_REACH + 1).min(minutes.len())];
            let (low, high) = range(&mut window.iter().map(|w| w.0));
            let (fastest, slowest) = range(&mut window.iter().flat_map(|w| [w.1 .0, w.1 .1]));
            if low > 0.0 && high <= low * STEADY_SPREAD && fastest == slowest {
                steady[m * 60..((m + 1) * 60).min(n)].fill(true);
            }
        }
        steady
    }

    /// Mean arrivals per second.
    #[cfg(test)]
    pub(crate) fn mean_rate(&self) -> f64 {
        self.arrivals.iter().sum::<f64>() / self.arrivals.len().max(1) as f64
    }
}

/// Minutes either side of a minute that must agree for it to be steady.
const STEADY_REACH: usize = 5;
/// Highest over lowest per-minute rate still called steady (set before
/// the first count, not searched: a 20 % band holds Poisson noise down to
/// 20 req/s and the corpus's ±5 % wander).
const STEADY_SPREAD: f64 = 1.2;

/// The generated scenarios, by name.
pub const SCENARIOS: [&str; 5] = ["step", "spike", "diurnal", "flash-sale", "shop-14d"];

/// A shop's daily curve: quiet at night, a lunch bump, the evening peak.
/// Mean about 1.0.
fn daily_shape(second_of_day: usize) -> f64 {
    let h = second_of_day as f64 / 3600.0;
    let base = 0.55 - 0.45 * (2.0 * PI * (h - 3.0) / 24.0).cos();
    let lunch = 0.25 * (-((h - 12.5) / 1.2).powi(2)).exp();
    let evening = 0.45 * (-((h - 20.0) / 2.0).powi(2)).exp();
    base + lunch + evening
}

/// Poisson-like noise: a normal draw with the arrivals' own deviation.
fn noisy(rng: &mut fastrand::Rng, rate: f64) -> f64 {
    let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos();
    (rate + z * rate.sqrt()).max(0.0)
}

/// A generated scenario at `base` mean requests per second.
pub fn generate(name: &str, base: f64, seed: u64) -> Option<Trace> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut t = Trace::plain(name, Vec::new());
    let mut push = |rate: f64, t: &mut Trace| {
        let a = noisy(&mut rng, rate);
        t.arrivals.push(a);
    };
    match name {
        // Flat, then ten times the load for 20 minutes (unannounced).
        "step" => {
            for s in 0..1800 {
                push(if s >= 600 { base * 10.0 } else { base }, &mut t);
            }
            t.steps.push(600);
            t.surprises.push(600..1800);
        }
        // Flat, a five-minute 10x spike, flat again.
        "spike" => {
            for s in 0..1800 {
                push(if (600..900).contains(&s) { base * 10.0 } else { base }, &mut t);
            }
            t.steps.push(600);
            t.falls.push(900);
            t.surprises.push(600..1500);
        }
        // Two days of the daily curve.
        "diurnal" => {
            for s in 0..2 * SECONDS_PER_DAY {
                push(base * daily_shape(s % SECONDS_PER_DAY), &mut t);
            }
        }
        // Three days, each with a 10x sale 20:00-21:00 (a fixed hour).
        "flash-sale" => return Some(shop(name, base, 3, &[], &mut rng)),
        // 14 days: daily curve, a daily 10x sale at 20:00, two unannounced
        // 10x spikes (day 4 at 11:00, day 10 at 15:00, 30 minutes each).
        "shop-14d" => return Some(shop(name, base, 14, &[(3, 11 * 3600), (9, 15 * 3600)], &mut rng)),
        _ => return None,
    }
    Some(t)
}

fn shop(name: &str, base: f64, days: usize, spikes: &[(usize, usize)], rng: &mut fastrand::Rng) -> Trace {
    let mut t = Trace::plain(name, Vec::with_capacity(days * SECONDS_PER_DAY));
    let (sale_from, sale_to) = (20 * 3600, 21 * 3600);
    for day in 0..days {
        let start = day * SECONDS_PER_DAY;
        t.sales.push(start + sale_from);
        if day == 0 {
            t.surprises.push(start + sale_from..start + sale_to + 600);
        }
        for &(d, at) in spikes {
            if d == day {
                t.steps.push(start + at);
                t.falls.push(start + at + 1800);
                t.surprises.push(start + at..start + at + 1800 + 600);
            }
        }
        for s in 0..SECONDS_PER_DAY {
            let mut rate = base * daily_shape(s);
            let in_sale = (sale_from..sale_to).contains(&s);
            let in_spike = spikes.iter().any(|&(d, at)| d == day && (at..at + 1800).contains(&s));
            if in_sale || in_spike {
                rate *= 10.0;
            }
            t.arrivals.push(noisy(rng, rate));
        }
    }
    t
}

/// How a CSV trace's counts are scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// As recorded.
    AsIs,
    /// Every count multiplied by this.
    Factor(f64),
    /// Scaled so the mean is this many requests per second.
    MeanRate(f64),
}

/// Reads a trace: `second,arrivals` (arrivals per second) or
/// `minute,requests` (requests per minute, spread over the minute's seconds
/// as a Poisson process, i.e. each request lands in a uniformly random
/// second, drawn from `seed`). Instead of one count a row may carry one per
/// priority class (`second,critical,normal,sheddable` or
/// `minute,critical,normal,sheddable`): the arrivals are their sum and the
/// shares the period's class mix. Scaling applies to the counts before they
/// are spread, so a per-minute trace scaled up stays Poisson within the
/// minute instead of turning each request into a burst. Rows are in order;
/// a missing row is a period of zero.
pub fn from_csv(name: &str, text: &str, scale: Scale, seed: u64) -> Result<Trace, String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or("the trace is empty")?;
    let (per_minute, classes) = match header.trim().to_ascii_lowercase().replace(' ', "").as_str() {
        "second,arrivals" => (false, false),
        "minute,requests" => (true, false),
        "second,critical,normal,sheddable" => (false, true),
        "minute,critical,normal,sheddable" => (true, true),
        other => {
            return Err(format!(
                "line 1: expected a header `second,arrivals`, `minute,requests`, \
                 `second,critical,normal,sheddable` or `minute,critical,normal,sheddable`, found `{other}`"
            ))
        }
    };
    let columns = if classes { 3 } else { 1 };
    let mut counts: Vec<f64> = Vec::new();
    let mut mix: Vec<[f32; 3]> = Vec::new();
    for (i, line) in lines {
        let row = i + 1;
        let mut fields = line.split(',');
        let at: usize = fields
            .next()
            .unwrap_or_default()
            .trim()
            .parse()
            .map_err(|e| format!("line {row}: {e}"))?;
        let values = fields
            .map(|f| f.trim().parse::<f64>().map_err(|e| format!("line {row}: {e}")))
            .collect::<Result<Vec<f64>, String>>()?;
        if values.len() != columns {
            return Err(format!(
                "line {row}: expected {} fields, found {}",
                columns + 1,
                values.len() + 1
            ));
        }
        if values.iter().any(|n| !n.is_finite() || *n < 0.0) {
            return Err(format!("line {row}: a count must be finite and not negative"));
        }
        if at < counts.len() {
            return Err(format!("line {row}: index {at} is out of order"));
        }
        if at > 100_000_000 {
            return Err(format!("line {row}: index {at} is too large"));
        }
        let n: f64 = values.iter().sum();
        counts.resize(at, 0.0);
        counts.push(n);
        if classes {
            mix.resize(at, [0.0, 1.0, 0.0]);
            mix.push(match values[..] {
                [c, m, s] if n > 0.0 => [(c / n) as f32, (m / n) as f32, (s / n) as f32],
                _ => [0.0, 1.0, 0.0],
            });
        }
    }
    if counts.is_empty() {
        return Err("the trace has no rows".into());
    }
    let mut trace = from_counts(name, &counts, per_minute, scale, seed);
    if per_minute {
        mix = mix.iter().flat_map(|m| std::iter::repeat_n(*m, 60)).collect();
    }
    trace.mix = mix;
    Ok(trace)
}

/// Parses a per-minute trace's counts (`minute,requests`).
pub(crate) fn minute_counts(text: &str) -> Result<Vec<f64>, String> {
    let mut counts = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let Some((at, n)) = line.split_once(',') else { continue };
        let at: usize = at.trim().parse().map_err(|e| format!("line {}: {e}", i + 1))?;
        let n: f64 = n.trim().parse().map_err(|e| format!("line {}: {e}", i + 1))?;
        if at >= counts.len() {
            counts.resize(at, 0.0);
            counts.push(n);
        }
    }
    Ok(counts)
}

/// A trace from counts per second or per minute (spread as a Poisson
/// process within each minute), scaled before spreading.
pub(crate) fn from_counts(name: &str, counts: &[f64], per_minute: bool, scale: Scale, seed: u64) -> Trace {
    let period = if per_minute { 60.0 } else { 1.0 };
    let mean_per_second = counts.iter().sum::<f64>() / (counts.len() as f64 * period);
    let k = match scale {
        Scale::AsIs => 1.0,
        Scale::Factor(k) => k,
        Scale::MeanRate(r) if mean_per_second > 0.0 => r / mean_per_second,
        Scale::MeanRate(_) => 1.0,
    };
    let arrivals = if per_minute {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut seconds = vec![0.0f64; counts.len() * 60];
        for (m, &n) in counts.iter().enumerate() {
            spread_minute(&mut seconds[m * 60..m * 60 + 60], n * k, &mut rng);
        }
        seconds
    } else {
        counts.iter().map(|n| n * k).collect()
    };
    Trace::plain(name, arrivals)
}

/// Spreads `n` requests (rounded at random) over a minute's seconds, each
/// in a uniformly random second: Poisson arrivals within the minute.
pub(crate) fn spread_minute(seconds: &mut [f64], n: f64, rng: &mut fastrand::Rng) {
    let whole = n.floor() as u64 + u64::from(rng.f64() < n.fract());
    if whole > 100_000 {
        // Multinomial by the normal approximation: one draw per second.
        let n = seconds.len();
        let per = whole as f64 / n as f64;
        let mut left = whole as f64;
        for (i, s) in seconds.iter_mut().enumerate() {
            let v = if i + 1 == n { left } else { noisy(rng, per).min(left) };
            *s += v;
            left -= v;
        }
        return;
    }
    for _ in 0..whole {
        seconds[rng.usize(..seconds.len())] += 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_load_is_a_flat_stretch_not_a_step_nor_a_slow_deploy() {
        // 10 minutes at 100 req/s, then 20 at 1000.
        let step: Vec<f64> = (0..1800).map(|t| if t < 600 { 100.0 } else { 1000.0 }).collect();
        let steady = Trace::plain("step", step).steady();
        assert!(steady[0] && steady[4 * 60 + 59], "five flat minutes ahead");
        assert!(
            !steady[5 * 60] && !steady[10 * 60] && !steady[14 * 60 + 59],
            "the step within five minutes"
        );
        assert!(steady[15 * 60] && steady[1799]);
        // A flat rate whose service time doubles in minutes 12-14.
        let mut deploy = Trace::plain("deploy", vec![100.0; 1800]);
        deploy.service_factor = (0..1800)
            .map(|t| if (720..900).contains(&t) { 2.0 } else { 1.0 })
            .collect();
        let steady = deploy.steady();
        assert!(steady[6 * 60] && !steady[7 * 60] && !steady[19 * 60 + 59] && steady[20 * 60]);
        // Noise within the band is steady; a 25 % swing is not.
        let noisy: Vec<f64> = (0..1800)
            .map(|t| if (t / 60) % 2 == 0 { 100.0 } else { 115.0 })
            .collect();
        assert!(Trace::plain("noisy", noisy).steady().iter().all(|&s| s));
        let swing: Vec<f64> = (0..1800)
            .map(|t| if (t / 60) % 2 == 0 { 100.0 } else { 125.0 })
            .collect();
        assert!(Trace::plain("swing", swing).steady().iter().all(|&s| !s));
    }

    #[test]
    fn scenarios_are_seeded_and_shaped() {
        let a = generate("step", 100.0, 1).unwrap();
        let b = generate("step", 100.0, 1).unwrap();
        assert_eq!(a.arrivals, b.arrivals);
        let before: f64 = a.arrivals[..600].iter().sum::<f64>() / 600.0;
        let after: f64 = a.arrivals[600..].iter().sum::<f64>() / 1200.0;
        assert!((after / before - 10.0).abs() < 0.5, "{before} {after}");
        let shop = generate("shop-14d", 100.0, 1).unwrap();
        assert_eq!(shop.arrivals.len(), 14 * SECONDS_PER_DAY);
        assert_eq!((shop.sales.len(), shop.steps.len()), (14, 2));
        let mean = shop.arrivals.iter().sum::<f64>() / shop.arrivals.len() as f64;
        assert!((100.0..170.0).contains(&mean), "{mean}");
        assert!(generate("nope", 1.0, 1).is_none());
    }

    #[test]
    fn csv_traces_parse_or_say_which_line_is_wrong() {
        let t = from_csv("t", "second,arrivals\n0,10\n1,12.5\n", Scale::AsIs, 1).unwrap();
        assert_eq!(t.arrivals, vec![10.0, 12.5]);
        assert!(from_csv("t", "second,arrivals\n0;10\n", Scale::AsIs, 1)
            .unwrap_err()
            .contains("line 2"));
        assert!(from_csv("t", "when,what\n0,1\n", Scale::AsIs, 1)
            .unwrap_err()
            .contains("header"));
        assert!(from_csv("t", "second,arrivals\n1,1\n0,1\n", Scale::AsIs, 1)
            .unwrap_err()
            .contains("out of order"));
    }

    #[test]
    fn class_traces_carry_their_mix() {
        let text = "second,critical,normal,sheddable\n0,1,2,7\n2,0,0,0\n";
        let t = from_csv("t", text, Scale::AsIs, 1).unwrap();
        assert_eq!(t.arrivals, vec![10.0, 0.0, 0.0]);
        let close = |a: [f64; 3], b: [f64; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(t.mix_at(0), [0.1, 0.2, 0.7]), "{:?}", t.mix_at(0));
        assert_eq!(t.mix_at(1), ALL_NORMAL, "a missing row and an empty one are plain");
        assert_eq!(t.mix_at(2), ALL_NORMAL);
        let m = from_csv("t", "minute,critical,normal,sheddable\n0,60,0,540\n", Scale::AsIs, 1).unwrap();
        assert_eq!(m.arrivals.len(), 60);
        assert_eq!(m.mix.len(), 60);
        assert!(close(m.mix_at(59), [0.1, 0.0, 0.9]), "{:?}", m.mix_at(59));
        assert!(
            from_csv("t", "second,critical,normal,sheddable\n0,1,2\n", Scale::AsIs, 1)
                .unwrap_err()
                .contains("expected 4 fields")
        );
        assert!(from_csv("t", "second,arrivals\n0,1\n", Scale::AsIs, 1)
            .unwrap()
            .mix
            .is_empty());
    }

    #[test]
    fn minute_traces_spread_as_poisson_within_the_minute_and_scale() {
        let text = "minute,requests\n0,600\n2,60\n";
        let t = from_csv("t", text, Scale::AsIs, 7).unwrap();
        assert_eq!(t.arrivals.len(), 180);
        assert_eq!(t.arrivals[..60].iter().sum::<f64>(), 600.0);
        assert_eq!(
            t.arrivals[60..120].iter().sum::<f64>(),
            0.0,
            "a missing minute is empty"
        );
        assert!(t.arrivals[..60].iter().all(|&a| a < 30.0), "spread, not one burst");
        let scaled = from_csv("t", text, Scale::MeanRate(100.0), 7).unwrap();
        assert!((scaled.mean_rate() - 100.0).abs() < 1.0, "{}", scaled.mean_rate());
        let doubled = from_csv("t", text, Scale::Factor(2.0), 7).unwrap();
        assert_eq!(doubled.arrivals.iter().sum::<f64>(), 1320.0);
    }
}
