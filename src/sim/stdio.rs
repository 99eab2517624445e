//! `tidegate simulate --stdio`: tidegate's real decision logic driven by an
//! outside simulator, one JSON line per simulated second.
//!
//! Tooling; pure apart from the two streams it is given. Each input line
//! is one second of the simulated pool:
//!
//! ```json
//! {"t": 17, "arrivals": 412, "completions": 405, "in_flight": 96, "queued": 3, "ready": 12, "pending": 2}
//! ```
//!
//! (`pending` = asked for, not ready yet; an optional `queue_wait_ms` is the
//! mean wait of the requests that left the queue that second, and
//! `queue_wait_ms_by_class` the same per priority class). Each is run
//! through the live loop's step (`autoscale::step::Stepper`: history,
//! forecast, guards, and the provisioning delay learned from the counts),
//! and answered with one line: `{"t": 17, "desired": 14}`. `t` is the
//! simulation's second (it also keys the forecast's minutes, as the
//! built-in simulator does).

use std::io::{BufRead, Write};

use serde::Deserialize;

use crate::autoscale::signal::Sample;
use crate::autoscale::step::{StepParams, Stepper, Tick};
use crate::autoscale::warmup::PendingCounts;

/// One input line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Second {
    t: u64,
    arrivals: f64,
    completions: f64,
    in_flight: f64,
    queued: f64,
    ready: u32,
    pending: u32,
    #[serde(default)]
    queue_wait_ms: Option<f64>,
    /// The same per priority class (critical, normal, sheddable), if known.
    #[serde(default)]
    queue_wait_ms_by_class: Option<[f64; 3]>,
    /// Coefficient of variation of the second's service times, if known.
    #[serde(default)]
    service_cv: Option<f64>,
}

/// Why the stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// An input line is not one second of the documented shape.
    #[error("line {line}: {message}")]
    Input {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Answers every line of `input` on `output` (flushed per line, so a
/// simulator can wait for each answer), until `input` ends.
pub(crate) fn run(params: StepParams, input: impl BufRead, mut output: impl Write) -> Result<(), StdioError> {
    let mut stepper = Stepper::new(params);
    let mut warm = PendingCounts::default();
    let mut desired: Option<u32> = None;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let s: Second = serde_json::from_str(&line).map_err(|e| StdioError::Input {
            line: i + 1,
            message: e.to_string(),
        })?;
        for numbers in [s.arrivals, s.completions, s.in_flight, s.queued] {
            if !numbers.is_finite() || numbers < 0.0 {
                return Err(StdioError::Input {
                    line: i + 1,
                    message: "counts must be finite and not negative".into(),
                });
            }
        }
        for observed in warm.observe(s.t as f64, s.ready, s.pending) {
            stepper.learn_delay(observed);
        }
        let queue_wait = match s.queue_wait_ms {
            Some(ms) => ms / 1000.0,
            // Little's law on the second's throughput.
            None if s.completions > 0.0 => s.queued / s.completions,
            None => 0.0,
        };
        let tick = Tick {
            t: s.t,
            unix: s.t as i64,
            sample: Sample {
                t: s.t,
                arrivals: s.arrivals,
                completed: s.completions,
                concurrency: s.in_flight + s.queued,
                queued: s.queued,
                queue_wait,
                class_wait: s
                    .queue_wait_ms_by_class
                    .map_or([0.0, queue_wait, 0.0], |w| w.map(|ms| ms / 1000.0)),
                service_cv2: s.service_cv.filter(|c| c.is_finite() && *c >= 0.0).map(|c| c * c),
            },
            ready: s.ready,
            provisioning: s.pending,
        };
        if let Some(d) = stepper.step(&tick).decision {
            desired = Some(d.desired);
        }
        let answer = desired.unwrap_or(s.ready + s.pending);
        writeln!(output, "{{\"t\": {}, \"desired\": {answer}}}", s.t)?;
        output.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::policy::{Policy, TidegateParams};
    use crate::config::Guards;

    fn params() -> StepParams {
        StepParams {
            policy: Policy::Tidegate(TidegateParams::default()),
            slots: 8,
            min: 1,
            max: 100,
            guards: Guards::default(),
            schedule: Vec::new(),
            provisioning_delay: 30.0,
        }
    }

    #[test]
    fn one_answer_per_second_growing_with_the_load() {
        let mut input = String::new();
        for t in 0..20 {
            let arrivals = if t < 10 { 100 } else { 2000 };
            input.push_str(&format!(
                "{{\"t\": {t}, \"arrivals\": {arrivals}, \"completions\": {arrivals}, \"in_flight\": 5, \"queued\": 0, \"ready\": 2, \"pending\": 0}}\n"
            ));
        }
        let mut out = Vec::new();
        run(params(), input.as_bytes(), &mut out).unwrap();
        let answers: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(answers.len(), 20);
        assert_eq!(answers[19]["t"], 19);
        assert!(answers[19]["desired"].as_u64().unwrap() > answers[5]["desired"].as_u64().unwrap());
    }

    #[test]
    fn a_bad_line_names_its_number() {
        let input = "{\"t\": 0, \"arrivals\": 1, \"completions\": 1, \"in_flight\": 0, \"queued\": 0, \"ready\": 1, \"pending\": 0}\n{\"t\": 1}\n";
        let e = run(params(), input.as_bytes(), Vec::new()).unwrap_err().to_string();
        assert!(e.starts_with("line 2: missing field"), "{e}");
        let negative = input.replace("{\"t\": 1}", "{\"t\": 1, \"arrivals\": -1, \"completions\": 1, \"in_flight\": 0, \"queued\": 0, \"ready\": 1, \"pending\": 0}");
        assert!(run(params(), negative.as_bytes(), Vec::new()).is_err());
    }
}
