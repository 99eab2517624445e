//! What the control path publishes for readers (the admin listener): the
//! listeners, the reload history, readiness, and the handle that asks the
//! owner task for a reload.
//!
//! Control path. Everything here is written only by the owner task in
//! `mod.rs` (or, for readiness, by the composition root) and read by
//! anyone; readers never write. A reload request is a message to the
//! owner, answered with its outcome.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

use crate::state::State;

/// Reload attempts kept for `/stats` and the dashboard.
pub(crate) const RELOADS_KEPT: usize = 20;

/// What started a reload. Logged and shown in `/stats` with the same
/// spelling (`file`, `signal`, `admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Trigger {
    File,
    Signal,
    Admin,
}

impl Trigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file",
            Trigger::Signal => "signal",
            Trigger::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reload request to the owner task.
pub(crate) struct Command {
    pub(crate) trigger: Trigger,
    pub(crate) reply: Option<oneshot::Sender<Result<u64, String>>>,
}

/// A handle for asking the owner task to reload.
#[derive(Clone)]
pub(crate) struct Control {
    tx: mpsc::Sender<Command>,
}

impl Control {
    /// A handle and the receiving end the owner task reads.
    pub(crate) fn channel() -> (Control, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(16);
        (Control { tx }, rx)
    }

    /// Reloads and waits for the outcome: the new generation, or why the
    /// file was refused (the old config still serves).
    pub(crate) async fn reload(&self, trigger: Trigger) -> Result<u64, String> {
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

    /// Asks for a reload without waiting for it; `false` once the owner is
    /// gone.
    pub(crate) async fn request(&self, trigger: Trigger) -> bool {
        self.tx.send(Command { trigger, reply: None }).await.is_ok()
    }
}

/// One reload attempt, as `/stats` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ReloadAttempt {
    pub(crate) at_unix_ms: u64,
    pub(crate) trigger: Trigger,
    pub(crate) ok: bool,
    pub(crate) generation: Option<u64>,
    pub(crate) error: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct ReloadLog {
    pub(crate) ok_total: u64,
    pub(crate) error_total: u64,
    /// Wall-clock time of the last successful reload (or of the start).
    pub(crate) last_success_unix_ms: u64,
    /// Newest first.
    pub(crate) recent: VecDeque<ReloadAttempt>,
}

/// A listener as `/stats` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ListenerInfo {
    pub(crate) name: String,
    pub(crate) address: SocketAddr,
    pub(crate) tls: bool,
}

/// The control path's published view.
pub(crate) struct View {
    pub(crate) state: Arc<State>,
    pub(crate) listeners: ArcSwap<Vec<ListenerInfo>>,
    pub(crate) reloads: ArcSwap<ReloadLog>,
    pub(crate) control: Control,
    /// Serving and not shutting down (`/readyz`).
    pub(crate) ready: AtomicBool,
    /// Wall-clock milliseconds at start.
    pub(crate) started_unix_ms: u64,
    /// The file reloads read; `None` for the embedded demo.
    pub(crate) config_path: Option<PathBuf>,
}

impl View {
    pub(crate) fn new(state: Arc<State>, control: Control, config_path: Option<PathBuf>) -> View {
        View {
            state,
            listeners: ArcSwap::from_pointee(Vec::new()),
            reloads: ArcSwap::from_pointee(ReloadLog {
                last_success_unix_ms: crate::clock::unix_ms(),
                ..ReloadLog::default()
            }),
            control,
            ready: AtomicBool::new(false),
            started_unix_ms: crate::clock::unix_ms(),
            config_path,
        }
    }
}
