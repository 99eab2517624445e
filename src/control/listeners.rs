//! The running client listeners, reconciled by name on each reload.
//!
//! Control path (the owner task holds the only [`Listeners`]). A kept
//! listener keeps its socket and connections (its certificates are re-read
//! on every reload); a new one is bound before the reload commits; a
//! removed one stops accepting and drains. Each listener is a
//! `server::serve` task that this set starts and stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::view::ListenerInfo;
use crate::config::Config;
use crate::server::bind::{bind_one, load_tls};
use crate::server::{self, Bound, StartError};
use crate::state::State;

struct Running {
    addr: SocketAddr,
    tls: Arc<arc_swap::ArcSwapOption<TlsAcceptor>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The listeners serving now.
#[derive(Default)]
pub(crate) struct Listeners {
    running: HashMap<String, Running>,
}

/// What a reload will do to the listeners, prepared before anything is
/// swapped: certificates loaded, new sockets bound.
pub(crate) struct Plan {
    tls: Vec<(String, Option<TlsAcceptor>)>,
    add: Vec<Bound>,
    remove: Vec<String>,
}

impl Listeners {
    /// Starts serving every bound listener.
    pub(crate) fn start(bound: Vec<Bound>, state: &Arc<State>) -> Listeners {
        let mut l = Listeners::default();
        for b in bound {
            l.add(b, state);
        }
        l
    }

    fn add(&mut self, bound: Bound, state: &Arc<State>) {
        let (stop, rx) = watch::channel(false);
        let addr = bound.listener.local_addr().expect("a bound listener has an address");
        let tls = Arc::clone(&bound.tls);
        let name = bound.name.clone();
        let task = tokio::spawn(server::serve(bound, Arc::clone(state), rx));
        self.running.insert(name, Running { addr, tls, stop, task });
    }

    /// Loads certificates and binds new sockets for `config`; nothing
    /// running changes.
    pub(crate) async fn prepare(&self, config: &Config) -> Result<Plan, StartError> {
        let mut plan = Plan {
            tls: Vec::new(),
            add: Vec::new(),
            remove: Vec::new(),
        };
        for l in &config.listeners {
            match self.running.get(&l.name) {
                Some(r) if r.addr == l.listen || l.listen.port() == 0 => {
                    plan.tls.push((l.name.clone(), load_tls(l)?));
                }
                Some(_) => {
                    // Same name, new address: a new socket; the old one drains.
                    plan.remove.push(l.name.clone());
                    plan.add.push(bind_one(l).await?);
                }
                None => plan.add.push(bind_one(l).await?),
            }
        }
        for name in self.running.keys() {
            if !config.listeners.iter().any(|l| &l.name == name) {
                plan.remove.push(name.clone());
            }
        }
        Ok(plan)
    }

    /// Carries out a prepared plan (after the new snapshot is published).
    pub(crate) fn apply(&mut self, plan: Plan, state: &Arc<State>) {
        for (name, tls) in plan.tls {
            if let Some(r) = self.running.get(&name) {
                r.tls.store(tls.map(Arc::new));
            }
        }
        for name in plan.remove {
            if let Some(r) = self.running.remove(&name) {
                let _ = r.stop.send(true);
                tracing::info!(listener = %name, "listener removed; draining");
            }
        }
        for bound in plan.add {
            tracing::info!(listener = %bound.name, "listener added");
            self.add(bound, state);
        }
    }

    /// The listeners as `/stats` shows them, by name.
    pub(crate) fn info(&self) -> Vec<ListenerInfo> {
        let mut list: Vec<ListenerInfo> = self
            .running
            .iter()
            .map(|(name, r)| ListenerInfo {
                name: name.clone(),
                address: r.addr,
                tls: r.tls.load().is_some(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Stops accepting everywhere and waits for every listener to drain.
    pub(crate) async fn stop(self) {
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        for (_, r) in self.running {
            let _ = r.task.await;
        }
    }
}
