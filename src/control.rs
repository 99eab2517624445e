//! The control path's one writer: the task that owns reloads, listeners,
//! health checking and periodic upkeep.
//!
//! Three triggers share one code path: the config file watcher, SIGHUP, and
//! `POST /reload` all send a [`Command`]; the owner runs read -> parse ->
//! validate -> load certificates -> bind new listeners -> build and swap the
//! snapshot -> start/stop listeners -> reconcile health probes. Any failure
//! before the swap changes nothing (newly bound sockets are dropped); the
//! old config keeps serving, and the error is logged, counted and kept for
//! `/stats`. Listeners are reconciled by name: kept ones keep their socket
//! and connections (their certificates are re-read on every reload), new
//! ones are bound, removed ones stop accepting and drain.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, Listener};
use crate::pool::backend::clock_ns;
use crate::pool::BackendState;
use crate::server::{self, Bound};
use crate::state::State;
use crate::{admin, health, StartError};

/// How often ejections expire, slow starts advance and gauges refresh.
const TICK: Duration = Duration::from_millis(250);
/// Reload attempts kept for `/stats` and the dashboard.
const RELOADS_KEPT: usize = 20;
/// Metric names of the control path.
pub const CONFIG_RELOADS_TOTAL: &str = "tidegate_config_reloads_total";
pub const POOL_BACKENDS: &str = "tidegate_pool_backends";

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    File,
    Signal,
    Admin,
}

struct Command {
    trigger: Trigger,
    reply: Option<oneshot::Sender<Result<u64, String>>>,
}

/// A handle for asking the owner task to reload.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Command>,
}

impl Control {
    /// Reloads and waits for the outcome: the new generation, or why the
    /// file was refused (the old config still serves).
    pub async fn reload(&self, trigger: Trigger) -> Result<u64, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command {
                trigger,
                reply: Some(reply),
            })
            .await
            .map_err(|_| "tidegate is shutting down".to_string())?;
        rx.await.map_err(|_| "tidegate is shutting down".to_string())?
    }
}

/// One reload attempt, as `/stats` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadAttempt {
    pub at_unix_ms: u64,
    pub trigger: Trigger,
    pub ok: bool,
    pub generation: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadLog {
    pub ok_total: u64,
    pub error_total: u64,
    /// Newest first.
    pub recent: VecDeque<ReloadAttempt>,
}

/// What the admin side reads: all of it shared, none of it written there.
pub struct Shared {
    pub state: Arc<State>,
    pub listeners: ArcSwap<Vec<ListenerInfo>>,
    pub reloads: ArcSwap<ReloadLog>,
    pub control: Control,
    pub metrics: &'static PrometheusHandle,
    pub ready: AtomicBool,
    pub started: SystemTime,
    pub config_path: Option<PathBuf>,
    pub autoscale: crate::autoscale::run::Registry,
    tidegate_exe: Option<PathBuf>,
}

/// A listener as `/stats` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerInfo {
    pub name: String,
    pub address: SocketAddr,
    pub tls: bool,
}

fn publish_listeners(shared: &Shared, running: &HashMap<String, Running>) {
    let mut list: Vec<ListenerInfo> = running
        .iter()
        .map(|(name, r)| ListenerInfo {
            name: name.clone(),
            address: r.addr,
            tls: r.tls.load().is_some(),
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    shared.listeners.store(Arc::new(list));
}

/// How `run` finds and watches its config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The file reloads read; `None` (the embedded demo) cannot reload.
    pub config_path: Option<PathBuf>,
    /// Reload when the file changes.
    pub watch_file: bool,
    /// Reload on SIGHUP.
    pub reload_on_sighup: bool,
    /// The `tidegate` binary, for the `local` provisioner's children.
    pub tidegate_exe: Option<PathBuf>,
}

struct Running {
    addr: SocketAddr,
    tls: Arc<arc_swap::ArcSwapOption<tokio_rustls::TlsAcceptor>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn start_listener(bound: Bound, state: &Arc<State>) -> Running {
    let (stop, rx) = watch::channel(false);
    let addr = bound.listener.local_addr().expect("a bound listener has an address");
    let tls = Arc::clone(&bound.tls);
    let task = tokio::spawn(server::serve(bound, Arc::clone(state), rx));
    Running { addr, tls, stop, task }
}

/// Serves until `shutdown` completes: the listeners in `bound`, the admin
/// listener if given, reloads from the triggers `opts` enables, health
/// checks and periodic upkeep. Then drains and returns.
pub async fn run(
    state: Arc<State>,
    bound: Vec<Bound>,
    admin_listener: Option<TcpListener>,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) {
    let (tx, mut rx) = mpsc::channel::<Command>(16);
    let shared = Arc::new(Shared {
        state: Arc::clone(&state),
        listeners: ArcSwap::from_pointee(Vec::new()),
        reloads: ArcSwap::from_pointee(ReloadLog::default()),
        control: Control { tx: tx.clone() },
        metrics: admin::metrics::handle(),
        ready: AtomicBool::new(false),
        started: SystemTime::now(),
        config_path: opts.config_path.clone(),
        autoscale: crate::autoscale::run::Registry::default(),
        tidegate_exe: opts.tidegate_exe.clone(),
    });
    let mut listeners: HashMap<String, Running> = bound
        .into_iter()
        .map(|b| (b.name.clone(), start_listener(b, &state)))
        .collect();
    publish_listeners(&shared, &listeners);
    let mut probes = health::Supervisor::default();
    probes.reconcile(&state);
    shared.autoscale.reconcile(&state, shared.tidegate_exe.clone());

    let (admin_stop, admin_rx) = watch::channel(false);
    let admin_task = admin_listener.map(|l| tokio::spawn(admin::serve(l, Arc::clone(&shared), admin_rx)));
    let mut background = Vec::new();
    if let (true, Some(path)) = (opts.watch_file, opts.config_path.clone()) {
        let (file_tx, mut file_rx) = mpsc::channel(1);
        let loaded = state.load().config.loaded_from.clone();
        background.push(tokio::spawn(crate::config::watch::watch(path, loaded, file_tx)));
        let tx = tx.clone();
        background.push(tokio::spawn(async move {
            while file_rx.recv().await.is_some() && request(&tx, Trigger::File).await {}
        }));
    }
    if opts.reload_on_sighup {
        let tx = tx.clone();
        background.push(tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() && request(&tx, Trigger::Signal).await {}
        }));
    }
    drop(tx);
    shared.ready.store(true, Ordering::SeqCst);

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(cmd) = rx.recv() => {
                let result = reload(&shared, &mut listeners, &mut probes).await;
                record(&shared, cmd.trigger, &result);
                if let Some(reply) = cmd.reply {
                    let _ = reply.send(result);
                }
            }
            _ = tick.tick() => {
                ticks += 1;
                upkeep(&shared, ticks);
                // Membership also changes without a reload (the autoscaler
                // publishes its members): a cheap pass that starts probes
                // for backends that have none.
                probes.reconcile(&state);
            }
            _ = &mut shutdown => break,
        }
    }

    shared.ready.store(false, Ordering::SeqCst);
    for t in background {
        t.abort();
    }
    for r in listeners.values() {
        let _ = r.stop.send(true);
    }
    for (_, r) in listeners {
        let _ = r.task.await;
    }
    let _ = admin_stop.send(true);
    if let Some(t) = admin_task {
        let _ = t.await;
    }
}

/// Asks for a reload without waiting for it; `false` once the owner is gone.
async fn request(tx: &mpsc::Sender<Command>, trigger: Trigger) -> bool {
    tx.send(Command { trigger, reply: None }).await.is_ok()
}

/// Periodic work: ejections and slow start, gauges, exporter upkeep.
fn upkeep(shared: &Shared, ticks: u64) {
    let snapshot = shared.state.load();
    let now = clock_ns();
    let mut rng = fastrand::Rng::new();
    for pool in &snapshot.pools {
        if health::tick(pool, now) {
            pool.dispatch(&mut rng);
        }
        let mut counts = pool.state_counts();
        counts[BackendState::Draining as usize] += pool.draining.iter().filter(|b| b.in_flight() > 0).count();
        for (state, n) in [
            BackendState::Active,
            BackendState::Warming,
            BackendState::Draining,
            BackendState::Down,
        ]
        .into_iter()
        .map(|s| (s, counts[s as usize]))
        {
            metrics::gauge!(POOL_BACKENDS, "pool" => pool.name.to_string(), "state" => state.as_str()).set(n as f64);
        }
    }
    // Histograms are drained into the exporter's summaries every few seconds.
    if ticks % 20 == 0 {
        shared.metrics.run_upkeep();
    }
}

/// Wall-clock milliseconds since the Unix epoch: the time stamp of every
/// record `/stats` shows (reloads, autoscaling decisions, hook calls).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn record(shared: &Shared, trigger: Trigger, result: &Result<u64, String>) {
    let at_unix_ms = unix_ms();
    let mut log = (*shared.reloads.load_full()).clone();
    let attempt = match result {
        Ok(generation) => {
            log.ok_total += 1;
            metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "ok").increment(1);
            tracing::info!(?trigger, generation, "config reloaded");
            ReloadAttempt {
                at_unix_ms,
                trigger,
                ok: true,
                generation: Some(*generation),
                error: None,
            }
        }
        Err(e) => {
            log.error_total += 1;
            metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "error").increment(1);
            tracing::error!(
                ?trigger,
                "config reload refused, the previous config keeps serving: {e}"
            );
            ReloadAttempt {
                at_unix_ms,
                trigger,
                ok: false,
                generation: None,
                error: Some(e.clone()),
            }
        }
    };
    log.recent.push_front(attempt);
    log.recent.truncate(RELOADS_KEPT);
    shared.reloads.store(Arc::new(log));
}

async fn reload(
    shared: &Shared,
    listeners: &mut HashMap<String, Running>,
    probes: &mut health::Supervisor,
) -> Result<u64, String> {
    let path = shared
        .config_path
        .clone()
        .ok_or_else(|| "no config file to reload (running the embedded demo)".to_string())?;
    let config = tokio::task::spawn_blocking(move || Config::load(&path))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let plan = prepare_listeners(&config, listeners).await.map_err(|e| e.to_string())?;
    let previous_admin = shared.state.load().config.admin.as_ref().map(|a| a.listen);
    if config.admin.as_ref().map(|a| a.listen) != previous_admin {
        tracing::warn!("the admin listener changed; that takes effect on restart");
    }
    let generation = shared.state.apply(config);
    for (name, tls) in plan.tls {
        if let Some(r) = listeners.get(&name) {
            r.tls.store(tls.map(Arc::new));
        }
    }
    for name in plan.remove {
        if let Some(r) = listeners.remove(&name) {
            let _ = r.stop.send(true);
            tracing::info!(listener = %name, "listener removed; draining");
        }
    }
    for bound in plan.add {
        tracing::info!(listener = %bound.name, "listener added");
        listeners.insert(bound.name.clone(), start_listener(bound, &shared.state));
    }
    probes.reconcile(&shared.state);
    shared.autoscale.reconcile(&shared.state, shared.tidegate_exe.clone());
    publish_listeners(shared, listeners);
    Ok(generation)
}

/// What a reload will do to the listeners, prepared before anything is
/// swapped: certificates loaded, new sockets bound.
struct ListenerPlan {
    tls: Vec<(String, Option<tokio_rustls::TlsAcceptor>)>,
    add: Vec<Bound>,
    remove: Vec<String>,
}

async fn prepare_listeners(config: &Config, running: &HashMap<String, Running>) -> Result<ListenerPlan, StartError> {
    let mut plan = ListenerPlan {
        tls: Vec::new(),
        add: Vec::new(),
        remove: Vec::new(),
    };
    for l in &config.listeners {
        match running.get(&l.name) {
            Some(r) if r.addr == l.listen || l.listen.port() == 0 => {
                plan.tls.push((l.name.clone(), crate::load_tls(l)?));
            }
            Some(_) => {
                // Same name, new address: a new socket; the old one drains.
                plan.remove.push(l.name.clone());
                plan.add.push(bind_one(l).await?);
            }
            None => plan.add.push(bind_one(l).await?),
        }
    }
    for name in running.keys() {
        if !config.listeners.iter().any(|l| &l.name == name) {
            plan.remove.push(name.clone());
        }
    }
    Ok(plan)
}

async fn bind_one(l: &Listener) -> Result<Bound, StartError> {
    let tls = crate::load_tls(l)?;
    crate::bind_listener(l, tls).await
}
