//! The composition root: the one place that starts tidegate's long-lived
//! tasks and wires them together.
//!
//! Given a live [`State`], bound listeners and an optional admin listener
//! (binding is the caller's, before anything serves), [`run`] starts:
//! - the client listeners (`server::serve`, one task each, owned by the
//!   control path's [`Listeners`] so a reload can add and remove them);
//! - the control owner task (`control::run`: reloads);
//! - the reload triggers: the config file watcher and SIGHUP, each a task
//!   sending to the owner through a [`Control`] handle; and SIGUSR1, which
//!   reopens the access log;
//! - the health checker (`health::run`);
//! - the rate limits' sweep, which forgets idle clients once a second off
//!   the workers ([`sweep_rate_limits`]);
//! - the autoscaler supervisor (`autoscale::live::run`);
//! - the DNS members supervisor (`discovery::run`);
//! - with `[cluster]`, the etcd coordinator (`cluster::run`), whose view
//!   the autoscaler loops and the admin listener share;
//! - the admin listener (`admin::serve`), which reads the control path's
//!   published [`View`] and the autoscalers' statuses.
//!
//! Under systemd (`Type=notify`) it tells the service manager `READY=1`
//! once everything above runs and `STOPPING=1` when the stop signal
//! arrives (`sd_notify.rs`); the reload owner reports reloads.
//!
//! Each service owns its child tasks (connections, probes, per-pool
//! loops) and ends them when it ends. Shutdown is a designed path: stop
//! being ready (`/readyz` answers 503) and keep serving for
//! `runtime.shutdown_delay`, so load balancers and Kubernetes endpoints
//! stop sending before anything is refused; then stop accepting and let
//! connections finish within `runtime.shutdown_timeout` (the control task
//! waits for the listeners), then stop the background services and the
//! admin listener.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::autoscale::live::Statuses;
use crate::clock::clock_ns;
use crate::cluster::Cluster;
use crate::control::{Control, Listeners, Trigger, View};
use crate::server::Bound;
use crate::state::State;
use crate::traffic::ratelimit::SWEEP_INTERVAL;
use crate::{access_log, admin, autoscale, cluster, config, control, discovery, health, sd_notify, telemetry};

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

/// Serves until `shutdown` completes: the listeners in `bound`, the admin
/// listener if given, reloads from the triggers `opts` enables, health
/// checks and the elastic pools. Then drains and returns.
pub async fn run(
    state: Arc<State>,
    bound: Vec<Bound>,
    admin_listener: Option<TcpListener>,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) {
    telemetry::install();
    let (control, commands) = Control::channel();
    let view = Arc::new(View::new(Arc::clone(&state), control.clone(), opts.config_path.clone()));
    let listeners = Listeners::start(bound, &state);
    let (stop, stopping) = watch::channel(false);
    let statuses = Arc::new(Statuses::default());
    // Read once: a reload does not move an instance between clusters.
    let cluster = state.load().config.cluster.clone().map(Cluster::new);

    let mut services = JoinSet::new();
    services.spawn(health::run(Arc::clone(&state), stopping.clone()));
    services.spawn(sweep_rate_limits(Arc::clone(&state), stopping.clone()));
    services.spawn(autoscale::live::run(
        Arc::clone(&state),
        Arc::clone(&statuses),
        opts.tidegate_exe.clone(),
        cluster.clone(),
        stopping.clone(),
    ));
    services.spawn(discovery::run(Arc::clone(&state), stopping.clone()));
    if let Some(cluster) = &cluster {
        services.spawn(cluster::run(Arc::clone(cluster), stopping.clone()));
    }
    let mut triggers = JoinSet::new();
    if let (true, Some(path)) = (opts.watch_file, opts.config_path.clone()) {
        let loaded = state.load().config.loaded_from.clone();
        let live = Arc::clone(&state);
        let certificates = move || live.load().config.certificate_files();
        triggers.spawn(watch_file(path, loaded, certificates, control.clone()));
    }
    if opts.reload_on_sighup {
        triggers.spawn(reload_on_sighup(control.clone()));
    }
    triggers.spawn(reopen_logs_on_sigusr1());
    let admin_task = admin_listener.map(|l| {
        let shared = admin::Shared {
            view: Arc::clone(&view),
            autoscale: Arc::clone(&statuses),
            cluster: cluster.clone(),
        };
        tokio::spawn(admin::serve(l, shared, stopping.clone()))
    });
    drop(control);
    view.ready.store(true, Ordering::SeqCst);
    // The listeners were bound before `run` and are accepting now.
    sd_notify::send(sd_notify::Event::Ready(format!(
        "serving, config generation {}",
        state.load().generation
    )));

    let stopped_view = Arc::clone(&view);
    let shutdown = async move {
        shutdown.await;
        stopped_view.ready.store(false, Ordering::SeqCst);
        sd_notify::send(sd_notify::Event::Stopping);
        // Read now, not at start: a reload may have changed it.
        let delay = stopped_view.state.load().config.runtime.shutdown_delay;
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "stopping: /readyz answers 503; still serving until the delay has passed"
            );
            tokio::time::sleep(delay).await;
        }
    };
    control::run(Arc::clone(&view), listeners, commands, shutdown).await;

    triggers.shutdown().await;
    let _ = stop.send(true);
    while services.join_next().await.is_some() {}
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    // The last lines of the access log are written before the process ends.
    if let Some(log) = view.state.load().access_log.clone() {
        let _ = tokio::task::spawn_blocking(move || log.flush(std::time::Duration::from_secs(1))).await;
    }
}

/// The simple form: `bound` listeners and the live `state` until
/// `shutdown`, without an admin listener or reload triggers.
pub async fn serve(state: Arc<State>, bound: Vec<Bound>, shutdown: impl Future<Output = ()>) {
    run(state, bound, None, Options::default(), shutdown).await
}

/// Turns changes of the config file or its certificates into reload
/// requests until the owner is gone.
async fn watch_file(
    path: PathBuf,
    loaded: Option<config::watch::Fingerprint>,
    certificates: impl Fn() -> Vec<PathBuf> + Send + Sync + 'static,
    control: Control,
) {
    let (tx, mut changes) = tokio::sync::mpsc::channel(1);
    let watcher = config::watch::watch(path, loaded, certificates, tx);
    tokio::pin!(watcher);
    loop {
        tokio::select! {
            _ = &mut watcher => return,
            change = changes.recv() => {
                if change.is_none() || !control.request(Trigger::File).await {
                    return;
                }
            }
        }
    }
}

/// Every [`SWEEP_INTERVAL`], each rate limit of the live snapshot forgets
/// its idle clients, on the blocking pool: a million keys take a few
/// milliseconds, which no worker should spend. A rule no longer in the
/// snapshot is not swept; its table goes with the last snapshot holding it.
async fn sweep_rate_limits(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::shutdown::stopped(&mut stop) => return,
        }
        let snapshot = state.load();
        if snapshot.rate_limits.iter().any(|r| r.has_keys()) {
            let now = clock_ns();
            let _ = tokio::task::spawn_blocking(move || {
                for rule in &snapshot.rate_limits {
                    rule.sweep(now);
                }
            })
            .await;
        }
    }
}

/// SIGUSR1 reopens the access log files (after logrotate moved them).
async fn reopen_logs_on_sigusr1() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("cannot listen for SIGUSR1; the access log is not reopened on rotation");
        return;
    };
    while usr1.recv().await.is_some() {
        tracing::info!("SIGUSR1: reopening the access log");
        access_log::reopen_all();
    }
}

/// Turns SIGHUP into reload requests until the owner is gone.
async fn reload_on_sighup(control: Control) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with POST /reload or by editing the file");
        return;
    };
    while hup.recv().await.is_some() && control.request(Trigger::Signal).await {}
}
