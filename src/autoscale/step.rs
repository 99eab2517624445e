//! One autoscaling step: sample -> view (with the floor) -> decide ->
//! guard. The one function the live loop, `tidegate simulate` and its
//! `--stdio` mode all run, so what the simulator proves is what runs.
//!
//! Control path, pure: no tokio, no I/O, no clock (time comes in with each
//! [`Tick`]). A [`Stepper`] owns everything a decision depends on between
//! seconds: the signal history, the per-minute history the forecast reads,
//! the policy's state, the guards' state, and the learned provisioning
//! delay. Each second the caller hands it one [`Tick`] (the pool as the
//! proxy saw it) and gets the size to ask for:
//!
//! 1. the sample joins the signal history and the minute being recorded;
//! 2. the view: the pool's size, the schedule's floor and the forecast
//!    (same minutes yesterday and last week, over the provisioning delay);
//! 3. the policy decides within `min`, `max` and the floor
//!    (`policy::decide`);
//! 4. the operator's guards bound the change (`guard::guard`): a step
//!    limit is honoured even on the way to a raised `min` or floor, so an
//!    operator's `max_step_up` always holds; `max` is never exceeded.

use super::forecast::{expected_rate, lookahead, track_record, Minute, Minutes, PeakRecord};
use super::guard::{guard, GuardState};
use super::policy::TidegateParams;
use super::policy::{decide, Decision, Policy, PolicyState, PoolView};
use super::schedule::floor;
use super::signal::{History, Sample};
use super::warmup::DelayEstimate;
use crate::config::schedule::Entry;
use crate::config::{Guards, PoolConfig};

/// Seconds of signal kept for the policies (the longest window they read).
pub(crate) const HISTORY_SECONDS: usize = 600;
/// Minutes over which the history forecast's track record is judged.
pub(crate) const TRACK_RECORD_MINUTES: u64 = 120;
/// The scheduled floor is in force this long before an entry's start, on
/// top of the provisioning delay, so the capacity is ready in time.
pub(crate) const SCHEDULE_MARGIN_SECS: f64 = 300.0;

/// What the operator configured for one pool's autoscaler.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepParams {
    pub(crate) policy: Policy,
    /// `max_concurrency` of one backend.
    pub(crate) slots: u32,
    pub(crate) min: u32,
    pub(crate) max: u32,
    pub(crate) guards: Guards,
    pub(crate) schedule: Vec<Entry>,
    /// The provisioning delay assumed before one is observed, seconds.
    pub(crate) provisioning_delay: f64,
}

impl StepParams {
    /// The step a pool's `autoscale` table configures (`None` for a pool
    /// that is not autoscaled): the live loop's, and `simulate --stdio
    /// --config`'s.
    pub(crate) fn from_config(pool: &PoolConfig) -> Option<StepParams> {
        let a = pool.autoscale.as_ref()?;
        Some(StepParams {
            policy: Policy::Tidegate(TidegateParams {
                slo: a.slo.as_secs_f64(),
                scale_down_window: a.scale_down_window.as_secs(),
                ..TidegateParams::default()
            }),
            slots: pool.max_concurrency,
            min: a.min,
            max: a.max,
            guards: a.guards,
            schedule: a.schedule.clone(),
            provisioning_delay: a.provisioning_delay.as_secs_f64(),
        })
    }
}

/// One second of the pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Tick {
    /// Seconds since the autoscaler started (monotonic).
    pub(crate) t: u64,
    /// Wall-clock seconds (UTC) for the schedule and the minute history;
    /// the simulator passes simulated seconds.
    pub(crate) unix: i64,
    pub(crate) sample: Sample,
    /// Members taking traffic.
    pub(crate) ready: u32,
    /// Members asked for and not ready yet.
    pub(crate) provisioning: u32,
}

/// What one step produced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// The size to ask for, when the policy decided this second (KPA every
    /// 2 s, HPA every 15 s, tidegate every second).
    pub(crate) decision: Option<Decision>,
    /// A minute of history that this second closed (to append to disk).
    pub(crate) closed: Option<Minute>,
    /// The rate the recorded history expects within the lookahead.
    pub(crate) forecast_rate: Option<f64>,
    /// The scheduled floor in force.
    pub(crate) floor: u32,
}

/// One pool's autoscaler state between steps.
#[derive(Debug, Clone)]
pub(crate) struct Stepper {
    params: StepParams,
    history: History,
    minutes: Minutes,
    policy: PolicyState,
    guards: GuardState,
    delay: DelayEstimate,
    /// The size asked for last (after the guards).
    asked: Option<u32>,
    /// The forecast's track record, judged once per minute: `(minute, error)`.
    record: Option<(u64, Option<f64>)>,
    /// How many of its predicted peaks came, judged as minutes close.
    peaks: PeakRecord,
}

impl Stepper {
    pub(crate) fn new(params: StepParams) -> Stepper {
        Stepper {
            delay: DelayEstimate::new(params.provisioning_delay),
            params,
            history: History::new(HISTORY_SECONDS),
            minutes: Minutes::default(),
            policy: PolicyState::default(),
            guards: GuardState::default(),
            asked: None,
            record: None,
            peaks: PeakRecord::default(),
        }
    }

    /// A reload changed the pool's autoscale settings: keep the history and
    /// what was learned.
    pub(crate) fn set_params(&mut self, params: StepParams) {
        if params.provisioning_delay != self.params.provisioning_delay && !self.delay.is_learned() {
            self.delay = DelayEstimate::new(params.provisioning_delay);
        }
        self.params = params;
    }

    pub(crate) fn params(&self) -> &StepParams {
        &self.params
    }

    /// Per-minute history read back from disk.
    pub(crate) fn seed_minutes(&mut self, minutes: Minutes) {
        let now = minutes.iter().last().map_or(0, |m| m.minute + 1);
        self.peaks.rebuild(&minutes, now, lookahead(self.delay.delay()));
        self.minutes = minutes;
        self.record = None;
    }

    pub(crate) fn minutes(&self) -> &Minutes {
        &self.minutes
    }

    /// A member became ready `observed` seconds after it was asked for.
    pub(crate) fn learn_delay(&mut self, observed: f64) {
        self.delay.observe(observed);
    }

    /// The provisioning delay planned with, seconds.
    pub(crate) fn delay(&self) -> f64 {
        self.delay.delay()
    }

    pub(crate) fn delay_is_learned(&self) -> bool {
        self.delay.is_learned()
    }

    /// One second: see the module docs.
    pub(crate) fn step(&mut self, tick: &Tick) -> Outcome {
        let p = &self.params;
        self.history.push(tick.sample);
        let closed = self.minutes.add_second(tick.unix.max(0) as u64, &tick.sample);
        let delay = self.delay.delay();
        let minutes = &self.minutes;
        let minute = tick.unix.max(0) as u64 / 60;
        let ahead = lookahead(delay);
        let forecast_rate = expected_rate(|m| minutes.rate(m), minute, ahead);
        if let Some(c) = closed {
            self.peaks.judge(|m| minutes.rate(m), c.minute, ahead);
        }
        let forecast_error = match self.record {
            Some((m, error)) if m == minute => error,
            _ => {
                let error = track_record(|m| minutes.rate(m), minute, TRACK_RECORD_MINUTES);
                self.record = Some((minute, error));
                error
            }
        };
        let forecast_error = forecast_rate.and(forecast_error);
        let forecast_peak_hits = forecast_rate.and(self.peaks.hits());
        let floor = floor(&p.schedule, tick.unix, (delay + SCHEDULE_MARGIN_SECS) as i64);
        let view = PoolView {
            ready: tick.ready,
            provisioning: tick.provisioning,
            slots: p.slots,
            min: p.min,
            max: p.max,
            floor,
            forecast_rate,
            forecast_error,
            forecast_peak_hits,
            provisioning_delay: delay,
        };
        let decision = decide(&p.policy, &mut self.policy, &self.history, tick.t, &view).map(|mut d| {
            let previous = *self.asked.get_or_insert(view.current());
            let (size, held) = guard(&p.guards, &mut self.guards, tick.t, previous, d.desired);
            if let Some(why) = held {
                d.reason.push_str(&format!("; wants {}, {why}", d.desired));
            }
            d.desired = size.min(p.max.max(p.min));
            self.asked = Some(d.desired);
            d
        });
        Outcome {
            decision,
            closed,
            forecast_rate,
            floor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::policy::TidegateParams;
    use crate::config::schedule::When;

    fn params(policy: Policy) -> StepParams {
        StepParams {
            policy,
            slots: 10,
            min: 1,
            max: 50,
            guards: Guards::default(),
            schedule: Vec::new(),
            provisioning_delay: 30.0,
        }
    }

    fn tick(t: u64, arrivals: f64, ready: u32) -> Tick {
        Tick {
            t,
            unix: t as i64,
            sample: Sample {
                t,
                arrivals,
                completed: arrivals,
                concurrency: arrivals * 0.02,
                queued: 0.0,
                queue_wait: 0.0,
                class_wait: [0.0; 3],
                service_cv2: None,
            },
            ready,
            provisioning: 0,
        }
    }

    #[test]
    fn the_floor_bounds_the_policy_and_the_guards_bound_the_step() {
        let mut p = params(Policy::Tidegate(TidegateParams::default()));
        p.guards.max_step_up = Some(2);
        p.schedule = vec![Entry {
            start: When::At(0),
            end: When::At(1_000),
            min: 6,
        }];
        let mut s = Stepper::new(p);
        // No load, but a scheduled floor of 6: reached two at a time.
        let d = s.step(&tick(1, 0.0, 1)).decision.unwrap();
        assert_eq!(d.desired, 3, "{}", d.reason);
        assert!(d.reason.contains("wants 6, max_step_up 2"), "{}", d.reason);
        assert_eq!(s.step(&tick(2, 0.0, 3)).decision.unwrap().desired, 5);
        assert_eq!(s.step(&tick(3, 0.0, 5)).decision.unwrap().desired, 6);
        assert_eq!(s.step(&tick(4, 0.0, 6)).decision.unwrap().desired, 6);
    }

    #[test]
    fn kpa_decides_every_other_second_through_the_same_step() {
        let mut s = Stepper::new(params(Policy::Kpa));
        assert!(s.step(&tick(1, 100.0, 1)).decision.is_none());
        assert!(s.step(&tick(2, 100.0, 1)).decision.is_some());
    }

    #[test]
    fn a_closed_minute_is_handed_back_and_feeds_the_forecast_a_day_later() {
        let mut s = Stepper::new(params(Policy::Tidegate(TidegateParams::default())));
        let mut closed = Vec::new();
        for t in 0..121 {
            closed.extend(s.step(&tick(t, 50.0, 1)).closed);
        }
        assert_eq!(closed.len(), 2);
        assert_eq!(closed[0].rate, 50.0);
        // A day later, the same minute is what the forecast reads.
        let day = 86_400;
        let out = s.step(&tick(day - 60, 50.0, 1));
        assert_eq!(out.forecast_rate, Some(50.0));
    }

    #[test]
    fn yesterdays_peak_is_not_bought_again_when_predicted_peaks_have_not_come() {
        use crate::autoscale::forecast::DAY;
        // Read back from disk: 100 req/s, with a peak of 1,000 at 10:00 on
        // day 0 that did not come back on day 1, and one at 15:00 on day 1.
        let peak = |m: u64| (600..610).contains(&m) || (DAY + 900..DAY + 910).contains(&m);
        let mut minutes = Minutes::default();
        for m in 0..2 * DAY + 898 {
            minutes.insert(Minute {
                minute: m,
                rate: if peak(m) { 1000.0 } else { 100.0 },
                peak_concurrency: 0.0,
                peak_queued: 0.0,
                peak_queue_wait: 0.0,
            });
        }
        let at = (2 * DAY + 898) * 60;
        let run = |peak_trust: f64| {
            let policy = Policy::Tidegate(TidegateParams {
                peak_trust,
                ..TidegateParams::default()
            });
            let mut s = Stepper::new(params(policy));
            s.seed_minutes(minutes.clone());
            s.step(&tick(at, 100.0, 1))
        };
        // Day 2, 14:58: yesterday's 15:00 is in view.
        let judged = run(TidegateParams::default().peak_trust);
        assert_eq!(judged.forecast_rate, Some(1000.0));
        let trusting = run(0.0).decision.unwrap();
        let d = judged.decision.unwrap();
        assert!(d.desired < trusting.desired, "{} vs {}", d.reason, trusting.reason);
        assert!(d.reason.contains("its peaks came 0 %"), "{}", d.reason);
    }

    #[test]
    fn the_learned_delay_replaces_the_configured_one() {
        let mut s = Stepper::new(params(Policy::Kpa));
        assert_eq!(s.delay(), 30.0);
        s.learn_delay(8.0);
        assert_eq!(s.delay(), 8.0);
        let mut p = s.params().clone();
        p.provisioning_delay = 60.0;
        s.set_params(p);
        assert_eq!(s.delay(), 8.0, "what was learned survives a reload");
    }
}
