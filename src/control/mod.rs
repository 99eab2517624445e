//! The reload transaction: the control path's owner task for config
//! changes and listeners.
//!
//! Three triggers share one code path: the config file watcher, SIGHUP and
//! `POST /reload` each send a [`Command`] through a [`Control`] handle (the
//! composition root wires them); the owner runs read -> parse -> validate ->
//! load certificates -> bind new listeners -> build and swap the snapshot ->
//! start/stop listeners. Any failure before the swap changes nothing (newly
//! bound sockets are dropped); the old config keeps serving, and the error
//! is logged, counted and kept for `/stats` (`view.rs`). Under systemd each
//! reload is bracketed by `RELOADING=1` and `READY=1` (`sd_notify.rs`), so
//! `systemctl reload` waits for it to finish.
//!
//! Other writers of the state exist and are not this task's: the
//! autoscaler publishes membership through `State::set_members`, and health
//! checks and the data path change a backend's state (active, down, ...)
//! in place. Health and the autoscaler learn of new snapshots from the
//! state's own change announcements, not from here.

mod listeners;
pub(crate) mod view;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::clock::unix_ms;
use crate::config::Config;
use crate::sd_notify;
use crate::telemetry::CONFIG_RELOADS_TOTAL;
pub(crate) use listeners::Listeners;
pub(crate) use view::{Command, Control, ListenerInfo, ReloadAttempt, ReloadLog, Trigger, View};

/// Serves reload commands until `shutdown` completes, then stops every
/// listener and waits for them to drain.
pub(crate) async fn run(
    view: Arc<View>,
    mut listeners: Listeners,
    mut commands: mpsc::Receiver<Command>,
    shutdown: impl Future<Output = ()>,
) {
    publish_listeners(&view, &listeners);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(cmd) = commands.recv() => {
                sd_notify::send(sd_notify::Event::Reloading);
                // Shutdown does not wait for a reload (nothing is applied
                // until the new config is read and checked); the stop has
                // told the service manager STOPPING=1 by then.
                let result = tokio::select! {
                    result = reload(&view, &mut listeners) => result,
                    _ = &mut shutdown => break,
                };
                sd_notify::send(sd_notify::Event::Ready(match &result {
                    Ok(generation) => format!("serving, config generation {generation}"),
                    Err(e) => format!("serving the previous config; the reload was refused: {e}"),
                }));
                record(&view, cmd.trigger, &result);
                if let Some(reply) = cmd.reply {
                    let _ = reply.send(result);
                }
            }
            _ = &mut shutdown => break,
        }
    }
    listeners.stop().await;
}

/// Longest a reload waits for the config file to be read and checked.
const CONFIG_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn record(view: &View, trigger: Trigger, result: &Result<u64, String>) {
    let at_unix_ms = unix_ms();
    let mut log = (*view.reloads.load_full()).clone();
    let attempt = match result {
        Ok(generation) => {
            log.ok_total += 1;
            log.last_success_unix_ms = at_unix_ms;
            metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "ok").increment(1);
            tracing::info!(trigger = %trigger.as_str(), generation, "config reloaded");
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
                trigger = %trigger.as_str(),
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
    log.recent.truncate(view::RELOADS_KEPT);
    view.reloads.store(Arc::new(log));
}

async fn reload(view: &View, listeners: &mut Listeners) -> Result<u64, String> {
    let path = view
        .config_path
        .clone()
        .ok_or_else(|| "no config file to reload (running the embedded demo)".to_string())?;
    // Off the control task, and bounded: a hung mount must not wedge
    // reloads, upkeep or shutdown.
    let config = tokio::time::timeout(
        CONFIG_READ_TIMEOUT,
        tokio::task::spawn_blocking(move || Config::load(&path)),
    )
    .await
    .map_err(|_| format!("reading the config took longer than {CONFIG_READ_TIMEOUT:?} (a hung mount?)"))?
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let plan = listeners.prepare(&config).await.map_err(|e| e.to_string())?;
    let previous_admin = view.state.load().config.admin.as_ref().map(|a| a.listen);
    if config.admin.as_ref().map(|a| a.listen) != previous_admin {
        tracing::warn!("the admin listener changed; that takes effect on restart");
    }
    let generation = view.state.apply(config);
    listeners.apply(plan, &view.state);
    publish_listeners(view, listeners);
    Ok(generation)
}

/// What `/stats` shows of the listeners, and their addresses for the
/// autoscaler's self-loop check.
fn publish_listeners(view: &View, listeners: &Listeners) {
    let info = listeners.info();
    view.state.set_own_addresses(info.iter().map(|l| l.address).collect());
    view.listeners.store(Arc::new(info));
}
