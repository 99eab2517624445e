//! An SVG chart of one simulated run: load and each policy's capacity (in
//! requests per second), with the oracle's, over time. Self-contained SVG.

use super::model::{Outcome, SimParams};
use super::scenario::Trace;

const W: f64 = 1200.0;
const H: f64 = 420.0;
const POINTS: usize = 1200;
const COLORS: [&str; 5] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"];

fn path(values: &[f64], max: f64) -> String {
    let step = (values.len() / POINTS).max(1);
    let n = values.len().div_ceil(step).max(2) - 1;
    let mut d = String::with_capacity(POINTS * 12);
    for (i, chunk) in values.chunks(step).enumerate() {
        let v = chunk.iter().copied().fold(f64::MIN, f64::max);
        let x = 40.0 + i as f64 / n as f64 * (W - 60.0);
        let y = H - 30.0 - v / max * (H - 60.0);
        d.push_str(&format!("{}{x:.1},{y:.1} ", if i == 0 { "M" } else { "L" }));
    }
    d
}

/// Load, oracle capacity and each policy's ready capacity over time.
pub fn chart(trace: &Trace, outcomes: &[Outcome], need: &[u32], p: &SimParams) -> String {
    let per_backend = f64::from(p.slots) / p.service;
    let capacity = |ready: &[u32]| ready.iter().map(|&r| f64::from(r) * per_backend).collect::<Vec<f64>>();
    let oracle = capacity(need);
    let peak_ready = outcomes.iter().flat_map(|o| o.ready.iter()).copied().max().unwrap_or(0);
    let max = trace
        .arrivals
        .iter()
        .copied()
        .chain(oracle.iter().copied())
        .chain(std::iter::once(f64::from(peak_ready) * per_backend))
        .fold(1.0, f64::max)
        * 1.1;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"40\" y=\"18\">{}: load (grey) and capacity in req/s; oracle dashed; provisioning delay {} s</text>\n",
        trace.name, p.delay
    );
    svg.push_str(&format!(
        "<path d=\"{}\" fill=\"none\" stroke=\"#bbb\" stroke-width=\"1\"/>\n",
        path(&trace.arrivals, max)
    ));
    svg.push_str(&format!(
        "<path d=\"{}\" fill=\"none\" stroke=\"black\" stroke-dasharray=\"4 3\" stroke-width=\"1\"/>\n",
        path(&oracle, max)
    ));
    for (i, o) in outcomes.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        svg.push_str(&format!(
            "<path d=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>\n",
            path(&capacity(&o.ready), max)
        ));
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>\n",
            60 + i * 110,
            H - 8.0,
            o.policy
        ));
    }
    svg.push_str(&format!(
        "<text x=\"4\" y=\"40\">{max:.0}</text><text x=\"4\" y=\"{}\">0</text>\n</svg>\n",
        H - 30.0
    ));
    svg
}
