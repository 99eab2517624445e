//! Traffic traces for the simulator: arrivals per second, from a CSV file
//! (`second,arrivals`) or generated (seeded, so runs repeat).

use std::f64::consts::PI;

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
}

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
    let mut t = Trace {
        name: name.into(),
        arrivals: Vec::new(),
        steps: vec![],
        falls: vec![],
        sales: vec![],
        surprises: vec![],
    };
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
    let mut t = Trace {
        name: name.into(),
        arrivals: Vec::with_capacity(days * SECONDS_PER_DAY),
        steps: vec![],
        falls: vec![],
        sales: vec![],
        surprises: vec![],
    };
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

/// Reads `second,arrivals` lines (a header line first).
pub fn from_csv(name: &str, text: &str) -> Result<Trace, String> {
    let mut arrivals = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let (_, a) = line
            .split_once(',')
            .ok_or_else(|| format!("line {}: expected `second,arrivals`", i + 1))?;
        arrivals.push(a.trim().parse::<f64>().map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    if arrivals.is_empty() {
        return Err("the trace has no rows".into());
    }
    Ok(Trace {
        name: name.into(),
        arrivals,
        steps: vec![],
        falls: vec![],
        sales: vec![],
        surprises: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let t = from_csv("t", "second,arrivals\n0,10\n1,12.5\n").unwrap();
        assert_eq!(t.arrivals, vec![10.0, 12.5]);
        assert!(from_csv("t", "second,arrivals\n0;10\n").unwrap_err().contains("line 2"));
    }
}
