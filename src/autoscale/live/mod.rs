//! The live elastic pool: control path, the part of `autoscale/` that runs
//! on tokio and does I/O.
//!
//! [`run`] (spawned once by `app.rs`) keeps one [`PoolLoop`] per
//! autoscaled pool, reconciled whenever the state announces a new
//! generation; a loop ends by itself when its pool is gone or no longer
//! autoscaled, and every loop ends with the supervisor. Each loop calls
//! the pure [`super::step::Stepper`] once a second, the same step the
//! simulator runs. [`Statuses`] is what the admin listener reads.

mod history_file;
mod pool_loop;
pub(crate) mod status;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::cluster::Cluster;
use crate::shutdown::stopped;
use crate::state::State;
pub(crate) use pool_loop::PoolLoop;
use status::SECONDS_KEPT;
pub(crate) use status::{Second, Status};

/// What one pool's loop publishes: its status and its last half hour.
#[derive(Default)]
pub(crate) struct Board {
    pub(crate) status: Mutex<Status>,
    pub(crate) seconds: Mutex<VecDeque<Second>>,
}

impl Board {
    /// Appends one second, forgetting the oldest beyond [`SECONDS_KEPT`].
    pub(crate) fn record(&self, second: Second) {
        let mut seconds = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        if seconds.len() == SECONDS_KEPT {
            seconds.pop_front();
        }
        seconds.push_back(second);
    }
}

/// Every autoscaled pool's board, by pool name.
#[derive(Default)]
pub(crate) struct Statuses {
    by_pool: Mutex<HashMap<String, Arc<Board>>>,
}

impl Statuses {
    /// A copy of a pool's status, if it is autoscaled.
    pub(crate) fn status(&self, pool: &str) -> Option<Status> {
        let board = self.board(pool)?;
        let status = board.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(status)
    }

    /// A copy of a pool's recorded seconds, oldest first.
    pub(crate) fn seconds(&self, pool: &str) -> Option<Vec<Second>> {
        let board = self.board(pool)?;
        let seconds = board.seconds.lock().unwrap_or_else(|p| p.into_inner());
        Some(seconds.iter().copied().collect())
    }

    /// The autoscaled pools, by name.
    pub(crate) fn pools(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    fn board(&self, pool: &str) -> Option<Arc<Board>> {
        self.by_pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pool)
            .cloned()
    }

    /// A fresh board for a pool's (new) loop.
    fn insert(&self, pool: &str) -> Arc<Board> {
        let board = Arc::new(Board::default());
        self.by_pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pool.to_string(), Arc::clone(&board));
        board
    }
}

/// Runs every pool's loop until `stop` turns true. `exe` is the tidegate
/// binary, for the `local` provisioner's children; `cluster`, in etcd
/// cluster mode, is this instance's view of the cluster.
pub(crate) async fn run(
    state: Arc<State>,
    statuses: Arc<Statuses>,
    exe: Option<PathBuf>,
    cluster: Option<Arc<Cluster>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = state.subscribe();
    let mut loops: JoinSet<()> = JoinSet::new();
    let mut by_pool: HashMap<String, AbortHandle> = HashMap::new();
    loop {
        while loops.try_join_next().is_some() {}
        by_pool.retain(|_, task| !task.is_finished());
        for pool in &state.load().pools {
            if pool.config.autoscale.is_none() || by_pool.contains_key(&*pool.name) {
                continue;
            }
            let board = statuses.insert(&pool.name);
            let pool_loop = PoolLoop::new(
                Arc::downgrade(&state),
                pool.name.to_string(),
                board,
                exe.clone(),
                cluster.clone(),
            );
            by_pool.insert(pool.name.to_string(), loops.spawn(pool_loop.run()));
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = stopped(&mut stop) => break,
        }
    }
    // Dropping the set aborts every loop (and a `local` provisioner's
    // children with it).
    loops.shutdown().await;
}
