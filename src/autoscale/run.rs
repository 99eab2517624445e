//! The live autoscaling loop: control path, one task per autoscaled pool.
//!
//! Every second: sample the pool (arrivals and completions since the last
//! sample, in flight + queued) into a [`History`], call the same
//! [`decide`] the simulator runs, and, when the wanted size changes or
//! drained members are ready to go, call the provisioning hook. Scale-in
//! never cuts a request: the members to drop are taken out of the pool
//! first (they turn `draining`), and only once their in-flight count is zero
//! are they sent to the hook as `remove`. A hook failure changes nothing; it
//! is recorded and retried after a backoff while the queue keeps serving.
//! New members join `warming` and take traffic once a probe passes; the
//! time they take teaches the provisioning delay ([`Warmup`]), and one not
//! ready within `ready_deadline` is reported and replaced. Each closed
//! minute is appended to the pool's history file under `runtime.state_dir`
//! and feeds the forecast (the same minutes yesterday and last week).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::forecast::{expected_rate, lookahead};
use super::guard::{guard, GuardState};
use super::history_file::Recorder;
use super::hook::{backoff, call_exec, call_webhook, HookError, HookRequest, LocalProvisioner};
use super::policy::{decide, Policy, PolicyState, PoolView, TidegateParams};
use super::signal::{History, Sample};
use super::warmup::Warmup;
use crate::config::HookConfig;
use crate::control::unix_ms;
use crate::pool::{BackendState, Pool};
use crate::state::State;

/// Decisions and hook calls kept per pool for `/stats`.
const KEPT: usize = 20;
pub const POOL_DESIRED_BACKENDS: &str = "tidegate_pool_desired_backends";
pub const AUTOSCALE_DECISIONS_TOTAL: &str = "tidegate_autoscale_decisions_total";
pub const HOOK_CALLS_TOTAL: &str = "tidegate_hook_calls_total";
pub const REPLACED_TOTAL: &str = "tidegate_autoscale_replaced_total";

#[derive(Debug, Clone, serde::Serialize)]
pub struct DecisionRecord {
    pub at_unix_ms: u64,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HookRecord {
    pub at_unix_ms: u64,
    pub seq: u64,
    pub desired: u32,
    pub removed: usize,
    pub result: &'static str,
    pub error: Option<String>,
    pub members: usize,
    pub duration_ms: u64,
}

/// One pool's autoscaler, as `/stats` shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub dry_run: bool,
    pub desired: u32,
    pub current: u32,
    pub ready: u32,
    pub draining: usize,
    pub hook_failures: u64,
    /// Seconds a new member takes to become ready: learned from the
    /// members seen so far, or the configured guess before any.
    pub provisioning_delay_s: f64,
    pub provisioning_delay_learned: bool,
    /// Members reported by the hook that never became ready in time.
    pub replaced: u64,
    /// The rate the recorded history expects within the lookahead.
    pub forecast_rate: Option<f64>,
    /// Mean queue wait of the requests that left the queue in the last second.
    pub queue_wait_ms: f64,
    /// Minutes of history recorded (and where, when kept on disk).
    pub history_minutes: usize,
    pub history_file: Option<String>,
    /// Newest first.
    pub decisions: VecDeque<DecisionRecord>,
    pub hook_calls: VecDeque<HookRecord>,
}

/// The running autoscalers and their statuses.
#[derive(Default)]
pub struct Registry {
    statuses: Mutex<HashMap<String, Arc<Mutex<Status>>>>,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl Registry {
    /// The status of a pool's autoscaler, if it has one.
    pub fn status(&self, pool: &str) -> Option<Status> {
        let statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        statuses
            .get(pool)
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Starts a loop for each autoscaled pool that has none; a loop ends by
    /// itself when its pool is gone or no longer autoscaled.
    pub fn reconcile(&self, state: &Arc<State>, exe: Option<PathBuf>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|_, t| !t.is_finished());
        for pool in &state.load().pools {
            if pool.config.autoscale.is_none() || tasks.contains_key(&*pool.name) {
                continue;
            }
            let status = Arc::new(Mutex::new(Status::default()));
            self.statuses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pool.name.to_string(), Arc::clone(&status));
            let task = tokio::spawn(run_pool(
                Arc::downgrade(state),
                pool.name.to_string(),
                status,
                exe.clone(),
            ));
            tasks.insert(pool.name.to_string(), task);
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().unwrap_or_else(|p| p.into_inner()).values() {
            t.abort();
        }
    }
}

struct Provisioner {
    local: Option<LocalProvisioner>,
    exe: Option<PathBuf>,
}

impl Provisioner {
    async fn call(&mut self, hook: &HookConfig, req: &HookRequest) -> Result<Vec<SocketAddr>, HookError> {
        let answer = match hook {
            HookConfig::Exec { command, timeout } => call_exec(command, req, *timeout).await?,
            HookConfig::Webhook { url, timeout } => call_webhook(url, req, *timeout).await?,
            HookConfig::Local {
                service_time,
                concurrency,
                timeout,
            } => {
                if self.local.is_none() {
                    let exe = self
                        .exe
                        .clone()
                        .ok_or_else(|| HookError::Local("no tidegate binary to start".into()))?;
                    self.local = Some(LocalProvisioner::new(exe, *service_time, *concurrency));
                }
                let local = self.local.as_mut().expect("just set");
                tokio::time::timeout(*timeout, local.call(req))
                    .await
                    .map_err(|_| HookError::Timeout(*timeout))??
            }
        };
        Ok(answer.members)
    }
}

/// Per-pool loop state that is not the policy's.
struct Membership {
    /// What the provisioner provides and the pool uses.
    members: Vec<SocketAddr>,
    /// Taken out of the pool, waiting for their last requests.
    draining: Vec<SocketAddr>,
    /// Replaced for never becoming ready: ignored while the provisioner
    /// still lists them.
    rejected: Vec<SocketAddr>,
    requested: Option<u32>,
    seq: u64,
    failures: u32,
    retry_at: Option<Instant>,
}

/// The pool's running counters, read once a second; a sample is the
/// difference between two readings.
#[derive(Debug, Clone, Copy)]
struct Totals {
    arrivals: u64,
    completed: u64,
    left_queue: u64,
    waited_ns: u64,
}

impl Totals {
    fn read(pool: &Pool) -> Totals {
        let (left_queue, waited_ns) = pool.shared.queue.waited();
        Totals {
            arrivals: pool.shared.arrivals(),
            completed: pool.shared.response_counts().iter().sum(),
            left_queue,
            waited_ns,
        }
    }

    /// One second of the pool, from the reading before (`None`: the first).
    fn sample(&self, before: Option<Totals>, t: u64, in_flight: u32, queued: f64) -> Sample {
        let b = before.unwrap_or(*self);
        let left = self.left_queue.saturating_sub(b.left_queue);
        Sample {
            t,
            arrivals: self.arrivals.saturating_sub(b.arrivals) as f64,
            completed: self.completed.saturating_sub(b.completed) as f64,
            concurrency: f64::from(in_flight) + queued,
            queued,
            queue_wait: if left == 0 {
                0.0
            } else {
                self.waited_ns.saturating_sub(b.waited_ns) as f64 / left as f64 / 1e9
            },
        }
    }
}

async fn run_pool(state: Weak<State>, name: String, status: Arc<Mutex<Status>>, exe: Option<PathBuf>) {
    let mut history = History::new(600);
    let mut policy_state = PolicyState::default();
    let mut provisioner = Provisioner { local: None, exe };
    let mut recorder = Recorder::default();
    let mut m = Membership {
        members: Vec::new(),
        draining: Vec::new(),
        rejected: Vec::new(),
        requested: None,
        seq: 0,
        failures: 0,
        retry_at: None,
    };
    let mut warmup: Option<Warmup> = None;
    let mut guard_state = GuardState::default();
    let mut asked: Option<u32> = None;
    let started = Instant::now();
    let mut last: Option<Totals> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = fastrand::Rng::new();
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let snapshot = state.load();
        let Some(pool) = snapshot.pool(&name) else { return };
        let Some(cfg) = pool.config.autoscale.clone() else {
            return;
        };
        recorder.open(&name, snapshot.config.runtime.state_dir.as_ref()).await;
        let warmup = warmup.get_or_insert_with(|| Warmup::new(cfg.provisioning_delay.as_secs_f64()));
        let elapsed = started.elapsed().as_secs_f64();
        let t = elapsed as u64;
        let unix = unix_ms() / 1000;

        // Sample.
        let totals = Totals::read(pool);
        let in_flight: u32 = pool.backends.iter().chain(&pool.draining).map(|b| b.in_flight()).sum();
        let sample = totals.sample(last.replace(totals), t, in_flight, pool.shared.queue.depth() as f64);
        history.push(sample);
        recorder.second(&name, unix, &sample).await;

        // Learn from members that came up; replace the ones that did not.
        warmup.retain(&m.members);
        for addr in warmup.pending().collect::<Vec<_>>() {
            if pool.is_active(addr) {
                warmup.ready(addr, elapsed);
            }
        }
        let overdue = warmup.overdue(elapsed, cfg.ready_deadline.as_secs_f64());
        if !overdue.is_empty() && !cfg.dry_run {
            for addr in &overdue {
                tracing::warn!(pool = %name, member = %addr, deadline = ?cfg.ready_deadline, "a provisioned member never became healthy; replacing it");
            }
            metrics::counter!(REPLACED_TOTAL, "pool" => name.clone()).increment(overdue.len() as u64);
            status.lock().unwrap_or_else(|p| p.into_inner()).replaced += overdue.len() as u64;
            m.members.retain(|a| !overdue.contains(a));
            m.draining.extend(&overdue);
            m.rejected.extend(&overdue);
            state.set_members(&name, m.members.clone());
        }

        // Decide.
        let statics = pool.config.backends.len() as u32;
        let counts = pool.state_counts();
        let ready = counts[BackendState::Active as usize] as u32;
        let warming = counts[BackendState::Warming as usize] as u32;
        let delay = warmup.delay();
        let forecast_rate = expected_rate(|min| recorder.minutes.rate(min), unix / 60, lookahead(delay));
        let view = PoolView {
            ready,
            provisioning: warming,
            slots: pool.config.max_concurrency,
            min: cfg.min,
            max: cfg.max,
            // Scheduled capacity, ready five minutes before the peak.
            floor: super::schedule::floor(&cfg.schedule, unix as i64, delay as i64 + 300),
            forecast_rate,
            provisioning_delay: delay,
        };
        let params = TidegateParams {
            slo: cfg.slo.as_secs_f64(),
            scale_down_window: cfg.scale_down_window.as_secs(),
            ..TidegateParams::default()
        };
        let Some(mut decision) = decide(&Policy::Tidegate(params), &mut policy_state, &history, t, &view) else {
            continue;
        };
        let previous = *asked.get_or_insert(view.current());
        let (size, limited) = guard(&cfg.guards, &mut guard_state, t, previous, decision.desired);
        if let Some(why) = limited {
            decision
                .reason
                .push_str(&format!("; wants {}, {why}", decision.desired));
        }
        decision.desired = size;
        asked = Some(size);
        let desired = decision.desired.saturating_sub(statics);
        {
            let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
            if s.desired != decision.desired || s.decisions.is_empty() {
                let direction = if decision.desired > s.desired { "up" } else { "down" };
                metrics::counter!(AUTOSCALE_DECISIONS_TOTAL, "pool" => name.clone(), "direction" => direction)
                    .increment(1);
                let from = s.desired;
                s.decisions.push_front(DecisionRecord {
                    at_unix_ms: unix_ms(),
                    from,
                    to: decision.desired,
                    reason: decision.reason.clone(),
                });
                s.decisions.truncate(KEPT);
                tracing::info!(pool = %name, from = s.desired, to = decision.desired, dry_run = cfg.dry_run, "{}", decision.reason);
            }
            s.dry_run = cfg.dry_run;
            s.desired = decision.desired;
            s.current = statics + m.members.len() as u32;
            s.ready = ready;
            s.draining = m.draining.len();
            s.provisioning_delay_s = delay;
            s.provisioning_delay_learned = warmup.is_learned();
            s.forecast_rate = forecast_rate;
            s.queue_wait_ms = sample.queue_wait * 1000.0;
            s.history_minutes = recorder.minutes.len();
            s.history_file = recorder.file.as_ref().map(|p| p.display().to_string());
        }
        metrics::gauge!(POOL_DESIRED_BACKENDS, "pool" => name.clone()).set(f64::from(decision.desired));
        if cfg.dry_run {
            continue;
        }
        if m.retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }

        // Scale-in: take members out of the pool first (they drain).
        if (m.members.len() as u32) > desired {
            let serving: Vec<(SocketAddr, bool)> = m.members.iter().map(|a| (*a, pool.is_active(*a))).collect();
            let victims = warmup.victims(&serving, m.members.len() - desired as usize);
            m.members.retain(|a| !victims.contains(a));
            m.draining.extend(&victims);
            state.set_members(&name, m.members.clone());
            tracing::info!(pool = %name, ?victims, "draining before deprovisioning");
        }
        // Drained (nothing in flight, or gone from the pool entirely).
        let snapshot = state.load();
        let Some(pool) = snapshot.pool(&name) else { return };
        let drained: Vec<SocketAddr> = m
            .draining
            .iter()
            .copied()
            .filter(|a| {
                pool.draining
                    .iter()
                    .chain(&pool.backends)
                    .all(|b| b.address != *a || b.in_flight() == 0)
            })
            .collect();
        if m.requested == Some(desired) && drained.is_empty() {
            continue;
        }
        m.seq += 1;
        // Members still draining are still provided (and may still carry
        // requests) until they are sent as `remove`: asking for fewer would
        // let the provisioner stop a member of its own choosing.
        let still_draining = m.draining.iter().filter(|a| !drained.contains(a)).count() as u32;
        let req = HookRequest {
            version: 1,
            pool: name.clone(),
            seq: m.seq,
            desired: desired + still_draining,
            current: (m.members.len() + m.draining.len()) as u32,
            ready,
            members: m.members.iter().map(ToString::to_string).collect(),
            remove: drained.iter().map(ToString::to_string).collect(),
            reason: decision.reason.clone(),
        };
        let began = Instant::now();
        let result = provisioner.call(&cfg.hook, &req).await;
        let record = |result: &'static str, error: Option<String>, members: usize| HookRecord {
            at_unix_ms: unix_ms(),
            seq: req.seq,
            desired,
            removed: drained.len(),
            result,
            error,
            members,
            duration_ms: began.elapsed().as_millis() as u64,
        };
        let entry = match result {
            Ok(members) => {
                m.failures = 0;
                m.retry_at = None;
                m.requested = Some(desired);
                m.draining.retain(|a| !drained.contains(a));
                m.rejected.retain(|a| members.contains(a));
                let members: Vec<SocketAddr> = members
                    .into_iter()
                    .filter(|a| !m.draining.contains(a) && !m.rejected.contains(a))
                    .collect();
                let asked_at = began.duration_since(started).as_secs_f64();
                warmup.reported(members.iter().copied().filter(|a| !m.members.contains(a)), asked_at);
                m.members = members;
                state.set_members(&name, m.members.clone());
                metrics::counter!(HOOK_CALLS_TOTAL, "pool" => name.clone(), "result" => "ok").increment(1);
                record("ok", None, m.members.len())
            }
            Err(e) => {
                m.failures += 1;
                let wait = backoff(m.failures, &mut rng);
                m.retry_at = Some(Instant::now() + wait);
                metrics::counter!(HOOK_CALLS_TOTAL, "pool" => name.clone(), "result" => e.label()).increment(1);
                tracing::warn!(pool = %name, error = %e, retry_in = ?wait, "provisioning hook failed; the pool is unchanged");
                record(e.label(), Some(e.to_string()), m.members.len())
            }
        };
        let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
        if entry.result != "ok" {
            s.hook_failures += 1;
        }
        s.current = statics + m.members.len() as u32;
        s.hook_calls.push_front(entry);
        s.hook_calls.truncate(KEPT);
    }
}
