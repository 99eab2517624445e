//! One autoscaled pool's loop: control path, one task per pool.
//!
//! Every second, in this order (each a small method of [`PoolLoop`]):
//! 1. **sample** the pool's counters (arrivals and completions since the
//!    last second, in flight + queued, queue wait);
//! 2. **learn** from members that came up (the provisioning delay) and
//!    give up on the ones overdue (`ready_deadline`);
//! 3. **decide** through the shared [`Stepper`] (decide -> guard -> floor),
//!    the same step `tidegate simulate` runs, and append a closed minute to
//!    the history file;
//! 4. **publish** the status `/stats` shows;
//! 5. **scale in**: members to drop are taken out of the pool (they turn
//!    `draining`); only once their in-flight count is zero (or
//!    `drain_timeout` passed) are they sent to the hook as `remove`;
//! 6. **call the hook** when what to ask for changed, with backoff after a
//!    failure (the pool is unchanged and the queue keeps serving);
//! 7. **write** the membership once (`State::set_members`).
//!
//! In etcd cluster mode (`src/cluster/`) the sample stepped on is the
//! cluster's summed demand; only the leader does steps 5 to 7 (its hook
//! calls carry its epoch, and it writes the membership to etcd as well);
//! a follower applies the membership the leader wrote; paused (etcd
//! unreachable) the pool keeps what it has.
//!
//! Steps 5 to 7 act only in `hook` mode and not in a dry run: in `export`
//! mode the decision is published (status, `tidegate_pool_desired_backends`,
//! `GET /demand`) for KEDA or an HPA to carry out, and membership is left
//! as the config gives it.
//!
//! Membership lives in one place, the snapshot (`Pool::provisioned`); the
//! loop keeps only what is its own: members draining, given up on, or
//! whose removal the provisioner ignored.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::history_file::Recorder;
use super::status::{DecisionRecord, HookRecord, Second, KEPT};
use super::Board;
use crate::autoscale::hook::{backoff, check_members, provisioner, HookAnswer, HookRequest, Provisioner};
use crate::autoscale::policy::Decision;
use crate::autoscale::signal::Sample;
use crate::autoscale::step::{Outcome, StepParams, Stepper, Tick};
use crate::autoscale::warmup::Warmup;
use crate::clock::unix_ms;
use crate::cluster::{Cluster, Demand, Role};
use crate::config::{AutoscaleConfig, HookConfig};
use crate::pool::{BackendState, Pool};
use crate::state::State;
use crate::telemetry::{AUTOSCALE_DECISIONS_TOTAL, HOOK_CALLS_TOTAL, POOL_DESIRED_BACKENDS, REPLACED_TOTAL};

/// The pool's running counters, read once a second; a sample is the
/// difference between two readings.
#[derive(Debug, Clone, Copy)]
struct Totals {
    arrivals: u64,
    completed: u64,
    /// Per class, in lane order.
    left_queue: [u64; 3],
    waited_ns: [u64; 3],
    late: [u64; 3],
    time_sum_us: u64,
    time_sq_sum: u64,
}

impl Totals {
    fn read(pool: &Pool) -> Totals {
        let waited = pool.shared.queue.waited();
        Totals {
            arrivals: pool.shared.arrivals(),
            completed: pool.shared.response_counts().iter().sum(),
            left_queue: waited.map(|(n, _)| n),
            waited_ns: waited.map(|(_, ns)| ns),
            late: pool.shared.queue.late(),
            time_sum_us: pool.shared.time_sums().0,
            time_sq_sum: pool.shared.time_sums().1,
        }
    }

    /// One second of the pool, from the reading before (`None`: the first).
    fn sample(&self, before: Option<Totals>, t: u64, in_flight: u32, queued: f64) -> Sample {
        let b = before.unwrap_or(*self);
        let (left, waited) = (delta(self.left_queue, b.left_queue), delta(self.waited_ns, b.waited_ns));
        let mean = |n: u64, ns: u64| if n == 0 { 0.0 } else { ns as f64 / n as f64 / 1e9 };
        let n = self.completed.saturating_sub(b.completed) as f64;
        let sum = self.time_sum_us.wrapping_sub(b.time_sum_us) as f64;
        let sq = self.time_sq_sum.wrapping_sub(b.time_sq_sum) as f64;
        // Squared coefficient of variation of the second's response times
        // (only with enough of them to mean something).
        let service_cv2 = (n >= 20.0 && sum > 0.0).then(|| {
            let mean = sum / n;
            ((sq / n - mean * mean).max(0.0) / (mean * mean)).min(25.0)
        });
        Sample {
            t,
            arrivals: self.arrivals.saturating_sub(b.arrivals) as f64,
            completed: self.completed.saturating_sub(b.completed) as f64,
            concurrency: f64::from(in_flight) + queued,
            queued,
            queue_wait: mean(left.iter().sum(), waited.iter().sum()),
            class_wait: std::array::from_fn(|k| mean(left[k], waited[k])),
            service_cv2,
        }
    }
}

/// Per-class counters' growth since an earlier reading.
fn delta(now: [u64; 3], before: [u64; 3]) -> [u64; 3] {
    std::array::from_fn(|k| now[k].saturating_sub(before[k]))
}

/// A member taken out of the pool, waiting for its last requests.
#[derive(Debug, Clone, Copy)]
struct Draining {
    addr: SocketAddr,
    since: f64,
}

/// The provisioner and when it may be called.
struct Hook {
    config: HookConfig,
    provisioner: Box<dyn Provisioner>,
    seq: u64,
    failures: u32,
    retry_at: Option<Instant>,
    /// The `desired` of the last successful call.
    asked: Option<u32>,
}

/// One pool's autoscaler.
pub(crate) struct PoolLoop {
    state: Weak<State>,
    name: String,
    board: Arc<Board>,
    exe: Option<PathBuf>,
    stepper: Option<Stepper>,
    hook: Option<Hook>,
    recorder: Recorder,
    warmup: Warmup,
    draining: Vec<Draining>,
    /// Given up on for never becoming ready: ignored while listed.
    rejected: Vec<SocketAddr>,
    /// Sent as `remove` and still listed by the answer: listed once more
    /// means the provisioner ignored the removal.
    removed: Vec<SocketAddr>,
    /// Removals the provisioner ignored: never used, never asked again.
    ignored: Vec<SocketAddr>,
    started: Instant,
    last: Option<Totals>,
    rng: fastrand::Rng,
    cluster: Option<Arc<Cluster>>,
    /// The epoch this loop acts under while its instance leads.
    epoch: Option<u64>,
}

impl PoolLoop {
    pub(crate) fn new(
        state: Weak<State>,
        name: String,
        board: Arc<Board>,
        exe: Option<PathBuf>,
        cluster: Option<Arc<Cluster>>,
    ) -> PoolLoop {
        PoolLoop {
            state,
            name,
            board,
            exe,
            stepper: None,
            hook: None,
            recorder: Recorder::default(),
            warmup: Warmup::default(),
            draining: Vec::new(),
            rejected: Vec::new(),
            removed: Vec::new(),
            ignored: Vec::new(),
            started: Instant::now(),
            last: None,
            rng: fastrand::Rng::new(),
            cluster,
            epoch: None,
        }
    }

    /// Runs once a second until the pool is gone or no longer autoscaled.
    pub(crate) async fn run(mut self) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if !self.tick().await {
                return;
            }
        }
    }

    /// One second; `false` once the loop should end.
    async fn tick(&mut self) -> bool {
        let Some(state) = self.state.upgrade() else {
            return false;
        };
        let snapshot = state.load();
        let Some(pool) = snapshot.pool(&self.name) else {
            return false;
        };
        let Some(cfg) = pool.config.autoscale.clone() else {
            return false;
        };
        self.configure(pool, &cfg, snapshot.config.runtime.state_dir.as_ref())
            .await;
        let now = self.started.elapsed().as_secs_f64();
        let (sample, violations) = self.sample(pool, now as u64);
        let (sample, role, cluster_members) = self.cluster_turn(sample);
        let acts = cfg.acts() && role.is_none_or(|r| r.epoch().is_some());
        let mut members = pool.provisioned.clone();
        self.learn(pool, &members, now);
        if acts {
            self.give_up_on_overdue(&mut members, &cfg, now);
        }
        let counts = pool.state_counts();
        let tick = Tick {
            t: now as u64,
            unix: (unix_ms() / 1000) as i64,
            sample,
            ready: counts[BackendState::Active as usize] as u32,
            provisioning: counts[BackendState::Warming as usize] as u32,
        };
        let outcome = self.stepper.as_mut().expect("configured").step(&tick);
        if let Some(closed) = outcome.closed {
            self.recorder.append(&self.name, closed).await;
        }
        self.publish(&outcome, &tick, &cfg);
        self.board.record(Second {
            t: tick.t,
            unix: tick.unix.max(0) as u64,
            arrivals: sample.arrivals as u64,
            completions: sample.completed as u64,
            in_flight: (sample.concurrency - sample.queued).max(0.0) as u64,
            queued: sample.queued as u64,
            queue_wait_ms: sample.queue_wait * 1000.0,
            queue_wait_ms_by_class: sample.class_wait.map(|w| w * 1000.0),
            service_cv: sample.service_cv2.map(f64::sqrt),
            ready: tick.ready,
            pending: tick.provisioning,
            desired: self.board.status.lock().unwrap_or_else(|p| p.into_inner()).desired,
            violations: violations.iter().sum(),
            violations_by_class: violations,
        });
        if let (Some(decision), true) = (&outcome.decision, acts) {
            let statics = pool.config.backends.len() as u32;
            let want = decision.desired.saturating_sub(statics);
            let drained = self.drained(pool, now, cfg.drain_timeout.as_secs_f64());
            self.scale_in(pool, &mut members, want, now);
            let own = state.own_addresses();
            let answer = self
                .call_hook(&tick, want, &members, &drained, decision, (cfg.max, &own))
                .await;
            if let Some(answer) = answer {
                members = self.accept(answer, &drained);
            }
        }
        match role {
            // Not acting (export, dry run): the members are someone else's
            // (static, DNS); writing the ones read at the start of this
            // second could undo a change made since.
            None if !acts => {}
            None => {
                state.set_members(&self.name, members);
            }
            Some(Role::Leader { epoch }) => {
                state.set_members(&self.name, members.clone());
                if acts {
                    self.write_members(epoch, &members).await;
                }
            }
            Some(Role::Follower) => {
                if let Some(written) = cluster_members {
                    state.set_members(&self.name, written);
                }
            }
            // etcd unreachable: serve the last membership applied.
            Some(Role::Paused) => {}
        }
        true
    }

    /// In cluster mode: reports this second's demand and returns the
    /// cluster's summed demand as the sample to step on, this instance's
    /// role, and the membership the leader wrote. Alone: the sample as is.
    fn cluster_turn(&mut self, sample: Sample) -> (Sample, Option<Role>, Option<Vec<SocketAddr>>) {
        let Some(cluster) = &self.cluster else {
            return (sample, None, None);
        };
        let turn = cluster.turn(&self.name, demand_of(&sample));
        let epoch = turn.role.epoch();
        if epoch != self.epoch {
            // A new leadership asks the provisioner again under its own
            // epoch (the call is declarative: asking twice is harmless).
            if let Some(hook) = self.hook.as_mut() {
                hook.asked = None;
            }
            self.epoch = epoch;
        }
        (sample_of(&turn.demand, sample.t), Some(turn.role), turn.members)
    }

    /// The leader's membership into etcd, conditional on still leading.
    async fn write_members(&mut self, epoch: u64, members: &[SocketAddr]) {
        let Some(cluster) = &self.cluster else { return };
        if let Err(e) = cluster.write_members(&self.name, epoch, members).await {
            tracing::warn!(pool = %self.name, epoch, error = %e, "cluster: membership not written; followers keep the previous one");
        }
    }

    /// Creates or updates the step, the provisioner and the history file
    /// after a start or a reload.
    async fn configure(&mut self, pool: &Pool, cfg: &AutoscaleConfig, state_dir: Option<&PathBuf>) {
        let Some(params) = StepParams::from_config(&pool.config) else {
            return;
        };
        match &mut self.stepper {
            Some(s) if *s.params() != params => s.set_params(params),
            Some(_) => {}
            None => self.stepper = Some(Stepper::new(params)),
        }
        match cfg.hook() {
            Some(wanted) if self.hook.as_ref().is_none_or(|h| h.config != *wanted) => {
                // A new kind or target: a fresh provisioner (the old one, and
                // a `local` one's children, are dropped).
                let (seq, asked) = self.hook.as_ref().map_or((0, None), |h| (h.seq, h.asked));
                self.hook = Some(Hook {
                    config: wanted.clone(),
                    provisioner: provisioner(wanted, self.exe.clone()),
                    seq,
                    failures: 0,
                    retry_at: None,
                    asked,
                });
            }
            Some(_) => {}
            // Export mode: nothing to call (a provisioner left from before a
            // reload is dropped).
            None => self.hook = None,
        }
        let stepper = self.stepper.as_mut().expect("just set");
        if let Some(minutes) = self.recorder.open(&self.name, state_dir, stepper.minutes()).await {
            stepper.seed_minutes(minutes);
        }
    }

    /// This second's sample and the requests that broke the SLO in it, per
    /// class.
    fn sample(&mut self, pool: &Pool, t: u64) -> (Sample, [u64; 3]) {
        let totals = Totals::read(pool);
        let in_flight = pool.in_flight();
        let before = self.last.replace(totals);
        let late = delta(totals.late, before.map_or(totals.late, |b| b.late));
        let sample = totals.sample(before, t, in_flight, pool.shared.queue.depth() as f64);
        (sample, late)
    }

    /// Members that came up teach the provisioning delay.
    fn learn(&mut self, pool: &Pool, members: &[SocketAddr], now: f64) {
        self.warmup.retain(members);
        let stepper = self.stepper.as_mut().expect("configured");
        for addr in self.warmup.pending().collect::<Vec<_>>() {
            if pool.is_active(addr) {
                if let Some(observed) = self.warmup.ready(addr, now) {
                    stepper.learn_delay(observed);
                }
            }
        }
    }

    /// Members still not healthy `ready_deadline` after they were asked
    /// for leave the pool and are sent as `remove` (the provisioner
    /// provides another: `desired` is unchanged).
    fn give_up_on_overdue(&mut self, members: &mut Vec<SocketAddr>, cfg: &AutoscaleConfig, now: f64) {
        let overdue = self.warmup.overdue(now, cfg.ready_deadline.as_secs_f64());
        if overdue.is_empty() {
            return;
        }
        for addr in &overdue {
            tracing::warn!(pool = %self.name, member = %addr, deadline = ?cfg.ready_deadline, "a provisioned member never became healthy; replacing it");
        }
        metrics::counter!(REPLACED_TOTAL, "pool" => self.name.clone()).increment(overdue.len() as u64);
        self.board.status.lock().unwrap_or_else(|p| p.into_inner()).replaced += overdue.len() as u64;
        members.retain(|a| !overdue.contains(a));
        self.draining
            .extend(overdue.iter().map(|&addr| Draining { addr, since: now }));
        self.rejected.extend(&overdue);
        self.warmup.retain(members);
    }

    fn publish(&self, outcome: &Outcome, tick: &Tick, cfg: &AutoscaleConfig) {
        let stepper = self.stepper.as_ref().expect("configured");
        let mut s = self.board.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = &outcome.decision {
            if s.desired != d.desired || s.decisions.is_empty() {
                let direction = if d.desired > s.desired { "up" } else { "down" };
                metrics::counter!(AUTOSCALE_DECISIONS_TOTAL, "pool" => self.name.clone(), "direction" => direction)
                    .increment(1);
                tracing::info!(pool = %self.name, from = s.desired, to = d.desired, dry_run = cfg.dry_run, "{}", d.reason);
                let from = s.desired;
                s.decisions.push_front(DecisionRecord {
                    at_unix_ms: unix_ms(),
                    from,
                    to: d.desired,
                    reason: d.reason.clone(),
                });
                s.decisions.truncate(KEPT);
            }
            s.desired = d.desired;
            metrics::gauge!(POOL_DESIRED_BACKENDS, "pool" => self.name.clone()).set(f64::from(d.desired));
        }
        s.dry_run = cfg.dry_run;
        s.mode = cfg.mode_name();
        s.ready = tick.ready;
        s.current = tick.ready + tick.provisioning;
        s.draining = self.draining.len();
        s.provisioning_delay_s = stepper.delay();
        s.provisioning_delay_learned = stepper.delay_is_learned();
        s.forecast_rate = outcome.forecast_rate;
        s.scheduled_floor = outcome.floor;
        s.queue_wait_ms = tick.sample.queue_wait * 1000.0;
        s.queue_wait_ms_by_class = tick.sample.class_wait.map(|w| w * 1000.0);
        s.history_minutes = stepper.minutes().len();
        s.history_file = self.recorder.file.as_ref().map(|p| p.display().to_string());
        s.ignored_removals = self.ignored.iter().map(ToString::to_string).collect();
    }

    /// Members drained since an earlier second: nothing in flight (or gone
    /// from the pool), or draining longer than `drain_timeout`.
    fn drained(&mut self, pool: &Pool, now: f64, drain_timeout: f64) -> Vec<SocketAddr> {
        let mut drained = Vec::new();
        let mut timed_out = 0;
        for d in &self.draining {
            let idle = pool
                .draining
                .iter()
                .chain(&pool.backends)
                .all(|b| b.address != d.addr || b.in_flight() == 0);
            if idle {
                drained.push(d.addr);
            } else if now - d.since >= drain_timeout {
                tracing::warn!(pool = %self.name, member = %d.addr, "drain_timeout passed with requests still open; removing the member anyway");
                timed_out += 1;
                drained.push(d.addr);
            }
        }
        if timed_out > 0 {
            self.board
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain_timeouts += timed_out;
        }
        drained
    }

    /// Takes members beyond `want` out of the pool: first those not
    /// serving yet, then the youngest, so warmed-up members stay.
    fn scale_in(&mut self, pool: &Pool, members: &mut Vec<SocketAddr>, want: u32, now: f64) {
        if members.len() as u32 <= want {
            return;
        }
        let serving: Vec<(SocketAddr, bool)> = members.iter().map(|a| (*a, pool.is_active(*a))).collect();
        let victims = self.warmup.victims(&serving, members.len() - want as usize);
        members.retain(|a| !victims.contains(a));
        self.draining
            .extend(victims.iter().map(|&addr| Draining { addr, since: now }));
        tracing::info!(pool = %self.name, ?victims, "draining before deprovisioning");
    }

    /// Calls the provisioner when what to ask for changed (or members are
    /// drained); `None` when no call was made or it failed.
    async fn call_hook(
        &mut self,
        tick: &Tick,
        want: u32,
        members: &[SocketAddr],
        drained: &[SocketAddr],
        decision: &Decision,
        (max, own): (u32, &[SocketAddr]),
    ) -> Option<HookAnswer> {
        let hook = self.hook.as_mut().expect("configured");
        if hook.retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        // Members still draining are still provided (and may still carry
        // requests) until they are sent as `remove`: asking for fewer would
        // let the provisioner stop a member of its own choosing. Removals it
        // ignored are still provided too.
        let still_draining = self.draining.iter().filter(|d| !drained.contains(&d.addr)).count() as u32;
        let desired = want + still_draining + self.ignored.len() as u32;
        if hook.asked == Some(desired) && drained.is_empty() {
            return None;
        }
        hook.seq += 1;
        let req = HookRequest {
            version: 1,
            pool: self.name.clone(),
            seq: hook.seq,
            epoch: self.epoch,
            desired,
            current: (members.len() + self.draining.len()) as u32,
            ready: tick.ready,
            members: members.iter().map(ToString::to_string).collect(),
            remove: drained.iter().map(ToString::to_string).collect(),
            reason: decision.reason.clone(),
        };
        let began = Instant::now();
        // An answer is held to what the pool may hold and may not point
        // back at tidegate (a huge or looping answer once took a pool down).
        let limit = (max + still_draining + self.ignored.len() as u32) as usize;
        let result = hook
            .provisioner
            .call(&req)
            .await
            .and_then(|a| check_members(&a, limit, own).map(|()| a));
        let (label, error) = match &result {
            Ok(_) => {
                hook.failures = 0;
                hook.retry_at = None;
                hook.asked = Some(desired);
                ("ok", None)
            }
            Err(e) => {
                hook.failures += 1;
                let wait = backoff(hook.failures, &mut self.rng);
                hook.retry_at = Some(Instant::now() + wait);
                tracing::warn!(pool = %self.name, error = %e, retry_in = ?wait, "provisioning hook failed; the pool is unchanged");
                (e.label(), Some(e.to_string()))
            }
        };
        metrics::counter!(HOOK_CALLS_TOTAL, "pool" => self.name.clone(), "result" => label).increment(1);
        let record = HookRecord {
            at_unix_ms: unix_ms(),
            seq: req.seq,
            desired: want,
            removed: drained.len(),
            result: label,
            error,
            members: result.as_ref().map_or(members.len(), |a| a.members.len()),
            duration_ms: began.elapsed().as_millis() as u64,
        };
        let mut s = self.board.status.lock().unwrap_or_else(|p| p.into_inner());
        if label != "ok" {
            s.hook_failures += 1;
        }
        s.hook_calls.push_front(record);
        s.hook_calls.truncate(KEPT);
        drop(s);
        if let Ok(answer) = &result {
            let asked_at = began.duration_since(self.started).as_secs_f64();
            let known: Vec<SocketAddr> = members.to_vec();
            self.warmup
                .reported(answer.members.iter().copied().filter(|a| !known.contains(a)), asked_at);
        }
        result.ok()
    }

    /// The members to use from a successful answer: everything listed,
    /// minus what is draining, given up on, or being removed. A member sent
    /// as `remove` and still listed gets one more call to go; listed after
    /// that, the provisioner ignored the removal: it is warned about once,
    /// never used and never asked about again (asking every second made
    /// the pool flap).
    fn accept(&mut self, answer: HookAnswer, drained: &[SocketAddr]) -> Vec<SocketAddr> {
        let listed = &answer.members;
        let mut still_listed = Vec::new();
        for addr in drained.iter().chain(&self.removed) {
            if !listed.contains(addr) || self.rejected.contains(addr) || still_listed.contains(addr) {
                continue;
            }
            if self.removed.contains(addr) {
                if !self.ignored.contains(addr) {
                    tracing::warn!(pool = %self.name, member = %addr, "the provisioner keeps listing a member it was asked to remove; ignoring it from now on and not asking again");
                    self.ignored.push(*addr);
                }
            } else {
                still_listed.push(*addr);
            }
        }
        self.removed = still_listed;
        self.ignored.retain(|a| listed.contains(a));
        self.draining.retain(|d| !drained.contains(&d.addr));
        self.rejected.retain(|a| listed.contains(a));
        let members: Vec<SocketAddr> = listed
            .iter()
            .copied()
            .filter(|a| {
                !self.draining.iter().any(|d| d.addr == *a)
                    && !self.rejected.contains(a)
                    && !self.ignored.contains(a)
                    && !self.removed.contains(a)
            })
            .collect();
        self.warmup.retain(&members);
        members
    }
}

/// A second of the pool as the cluster exchanges it.
fn demand_of(s: &Sample) -> Demand {
    Demand {
        at_unix_ms: unix_ms(),
        arrivals: s.arrivals,
        completions: s.completed,
        in_flight: (s.concurrency - s.queued).max(0.0),
        queued: s.queued,
        queue_wait_s: s.queue_wait,
        class_wait_s: s.class_wait,
        service_cv2: s.service_cv2,
    }
}

/// The cluster's demand as the sample the step reads.
fn sample_of(d: &Demand, t: u64) -> Sample {
    Sample {
        t,
        arrivals: d.arrivals,
        completed: d.completions,
        concurrency: d.in_flight + d.queued,
        queued: d.queued,
        queue_wait: d.queue_wait_s,
        class_wait: d.class_wait_s,
        service_cv2: d.service_cv2,
    }
}
