//! Several tidegate instances, one decision, through etcd: control path.
//!
//! With `[cluster]` configured, [`run`] (spawned once by `app.rs`) keeps
//! this instance's part of the cluster, once a second (polling, no watch
//! stream: one round of a few small requests is cheap and its staleness,
//! at most a second, is well inside what the autoscaler reacts to):
//! 1. keep a lease of `etcd.lease` alive (grant a new one when it expired);
//! 2. write this instance's per-pool [`Demand`] to
//!    `{prefix}/demand/{pool}/{instance}`, bound to the lease;
//! 3. campaign: a transaction creates `{prefix}/leader` = instance with
//!    the lease if it does not exist; the leader's epoch is that key's
//!    create revision (the same transaction tells an incumbent it still
//!    holds it);
//! 4. read every instance's demand and every pool's membership
//!    (`{prefix}/members/{pool}`).
//!
//! The per-pool autoscaler loops ask [`Cluster::turn`] each second for
//! their role (pure, `decide.rs`) and the summed demand: the leader decides
//! on the sum, calls hooks with its epoch and writes the membership with
//! [`Cluster::write_members`] (a transaction conditional on still holding
//! the leader key at that epoch); followers apply the membership written;
//! with etcd unreachable everyone is `Paused` and keeps what it has.
//! Nothing here is on the data path.

mod decide;
mod etcd;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

pub(crate) use decide::{Demand, Role};
use etcd::{Compare, Etcd, EtcdError};

use crate::clock::unix_ms;
use crate::config::ClusterConfig;
use crate::shutdown::stopped;

/// What a pool's loop gets each second.
#[derive(Debug, Clone)]
pub(crate) struct Turn {
    pub(crate) role: Role,
    /// The cluster's demand on the pool (this instance's own when alone).
    pub(crate) demand: Demand,
    /// The membership the leader last wrote for the pool, if any.
    pub(crate) members: Option<Vec<SocketAddr>>,
}

/// The value at `{prefix}/members/{pool}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Membership {
    epoch: u64,
    members: Vec<SocketAddr>,
}

/// Why a membership write did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    /// etcd could not be asked.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The leader key is no longer this instance's at this epoch.
    #[error("no longer the leader (epoch {0})")]
    NotLeader(u64),
}

/// `/stats` `cluster`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterStatus {
    pub(crate) instance: String,
    pub(crate) role: &'static str,
    /// This instance's epoch while leader, else the leader's seen last.
    pub(crate) epoch: Option<u64>,
    pub(crate) leader: Option<String>,
    pub(crate) etcd_reachable: bool,
    pub(crate) last_error: Option<String>,
    pub(crate) lease_id: Option<i64>,
    pub(crate) prefix: String,
}

#[derive(Default)]
struct Inner {
    /// This instance's demand per pool, as the loops report it.
    own: HashMap<String, Demand>,
    /// Other instances' demand per pool, from the last read.
    others: HashMap<String, Vec<Demand>>,
    members: HashMap<String, Membership>,
    lease: Option<i64>,
    renewed: Option<Instant>,
    /// The epoch of the leadership this instance holds.
    held: Option<u64>,
    /// The leader seen last: its name and epoch.
    leader: Option<(String, u64)>,
    etcd_up: bool,
    last_error: Option<String>,
}

/// This instance's view of the cluster, shared by the coordinator and the
/// pool loops. The lock is held for copies only, never across an await.
pub(crate) struct Cluster {
    config: ClusterConfig,
    etcd: Etcd,
    inner: Mutex<Inner>,
}

impl Cluster {
    pub(crate) fn new(config: ClusterConfig) -> Arc<Cluster> {
        Arc::new(Cluster {
            etcd: Etcd::new(config.endpoints.clone()),
            config,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn role_now(&self, inner: &Inner) -> Role {
        decide::role(
            inner.etcd_up,
            inner.held,
            inner.renewed.map(|r| r.elapsed()),
            self.config.lease,
        )
    }

    /// Records the pool's demand this second and returns what the pool's
    /// loop does with it.
    pub(crate) fn turn(&self, pool: &str, own: Demand) -> Turn {
        let mut inner = self.inner();
        inner.own.insert(pool.to_string(), own);
        let others = inner.others.get(pool).map_or(&[][..], Vec::as_slice);
        // A key outlives its instance by up to one lease.
        let max_age = (self.config.lease.as_millis() as u64).max(2_000);
        Turn {
            role: self.role_now(&inner),
            demand: decide::sum(&own, others, unix_ms(), max_age),
            members: inner.members.get(pool).map(|m| m.members.clone()),
        }
    }

    /// Writes the pool's membership, if this instance still holds the
    /// leader key at `epoch`.
    pub(crate) async fn write_members(
        &self,
        pool: &str,
        epoch: u64,
        members: &[SocketAddr],
    ) -> Result<(), ClusterError> {
        let value = Membership {
            epoch,
            members: members.to_vec(),
        };
        if self.inner().members.get(pool) == Some(&value) {
            return Ok(());
        }
        let compares = [
            Compare::Value(self.config.instance.clone().into_bytes()),
            Compare::CreateRevision(epoch as i64),
        ];
        let bytes = serde_json::to_vec(&value).expect("membership serialises");
        let result = self
            .etcd
            .txn(&self.leader_key(), &compares, &self.members_key(pool), &bytes, 0)
            .await?;
        if !result.succeeded {
            let mut inner = self.inner();
            if inner.held == Some(epoch) {
                inner.held = None;
                tracing::warn!(epoch, "lost the cluster leadership while writing membership");
            }
            return Err(ClusterError::NotLeader(epoch));
        }
        self.inner().members.insert(pool.to_string(), value);
        Ok(())
    }

    /// What `/stats` shows.
    pub(crate) fn status(&self) -> ClusterStatus {
        let inner = self.inner();
        let role = self.role_now(&inner);
        let epoch = role.epoch().or_else(|| inner.leader.as_ref().map(|l| l.1));
        ClusterStatus {
            instance: self.config.instance.clone(),
            role: role.name(),
            epoch,
            leader: inner.leader.as_ref().map(|l| l.0.clone()),
            etcd_reachable: inner.etcd_up,
            last_error: inner.last_error.clone(),
            lease_id: inner.lease,
            prefix: self.config.prefix.clone(),
        }
    }

    fn leader_key(&self) -> String {
        format!("{}/leader", self.config.prefix)
    }

    fn members_key(&self, pool: &str) -> String {
        format!("{}/members/{pool}", self.config.prefix)
    }

    // === impl Cluster: the coordinator's round ===

    /// One round; the first error ends it (the next round starts over).
    async fn round(&self) -> Result<(), EtcdError> {
        let lease = self.lease().await?;
        let own: Vec<(String, Demand)> = self.inner().own.iter().map(|(p, d)| (p.clone(), *d)).collect();
        for (pool, demand) in own {
            let key = format!("{}/demand/{pool}/{}", self.config.prefix, self.config.instance);
            let value = serde_json::to_vec(&demand).expect("demand serialises");
            self.etcd.put(&key, &value, lease).await?;
        }
        self.campaign(lease).await?;
        self.read_demand().await?;
        self.read_members().await
    }

    /// The lease, renewed (or a new one when it expired).
    async fn lease(&self) -> Result<i64, EtcdError> {
        let held = self.inner().lease;
        if let Some(id) = held {
            // The TTL restarts when etcd receives the request, after it is
            // sent: counting from the send errs on the safe side.
            let asked = Instant::now();
            match self.etcd.keep_alive(id).await {
                Ok(_) => {
                    self.inner().renewed = Some(asked);
                    return Ok(id);
                }
                Err(EtcdError::LeaseExpired(_)) => {
                    tracing::warn!(lease = id, "the cluster lease expired; taking a new one");
                    let mut inner = self.inner();
                    inner.lease = None;
                    inner.renewed = None;
                    inner.held = None;
                }
                Err(e) => return Err(e),
            }
        }
        let asked = Instant::now();
        let id = self.etcd.grant(self.config.lease).await?;
        let mut inner = self.inner();
        inner.lease = Some(id);
        inner.renewed = Some(asked);
        Ok(id)
    }

    /// Becomes (or stays) leader if the leader key is free (or ours).
    async fn campaign(&self, lease: i64) -> Result<(), EtcdError> {
        let me = self.config.instance.as_bytes();
        let key = self.leader_key();
        let result = self
            .etcd
            .txn(&key, &[Compare::CreateRevision(0)], &key, me, lease)
            .await?;
        let mut inner = self.inner();
        let was = inner.held;
        let (now_held, leader) = if result.succeeded {
            let epoch = result.revision as u64;
            (Some(epoch), Some((self.config.instance.clone(), epoch)))
        } else {
            match result.current {
                Some(kv) => {
                    let name = String::from_utf8_lossy(&kv.value).into_owned();
                    let epoch = kv.create_revision as u64;
                    // Ours only if bound to our current lease: a key left by
                    // this instance's previous life is not a leadership.
                    let ours = kv.value == me && kv.lease == lease;
                    (ours.then_some(epoch), Some((name, epoch)))
                }
                None => (None, None),
            }
        };
        inner.held = now_held;
        inner.leader = leader;
        if was != now_held {
            match now_held {
                Some(epoch) => tracing::info!(instance = %self.config.instance, epoch, "cluster: this instance leads"),
                None => {
                    tracing::info!(instance = %self.config.instance, leader = ?inner.leader, "cluster: this instance follows")
                }
            }
        }
        Ok(())
    }

    async fn read_demand(&self) -> Result<(), EtcdError> {
        let prefix = format!("{}/demand/", self.config.prefix);
        let kvs = self.etcd.range_prefix(&prefix).await?;
        let mut others: HashMap<String, Vec<Demand>> = HashMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(&kv.key);
            let Some((pool, instance)) = key.strip_prefix(&prefix).and_then(|r| r.rsplit_once('/')) else {
                continue;
            };
            if instance == self.config.instance {
                continue;
            }
            if let Ok(d) = serde_json::from_slice::<Demand>(&kv.value) {
                others.entry(pool.to_string()).or_default().push(d);
            }
        }
        self.inner().others = others;
        Ok(())
    }

    async fn read_members(&self) -> Result<(), EtcdError> {
        let prefix = format!("{}/members/", self.config.prefix);
        let kvs = self.etcd.range_prefix(&prefix).await?;
        let mut members = HashMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(&kv.key);
            let Some(pool) = key.strip_prefix(&prefix) else {
                continue;
            };
            match serde_json::from_slice::<Membership>(&kv.value) {
                Ok(m) => {
                    members.insert(pool.to_string(), m);
                }
                Err(e) => tracing::warn!(key = %key, error = %e, "cluster: unreadable membership; ignored"),
            }
        }
        self.inner().members = members;
        Ok(())
    }

    /// Records a round's outcome: the status and, on a change, the log
    /// (`/metrics` reads [`Cluster::status`] when scraped).
    fn record(&self, result: Result<(), EtcdError>) {
        let mut inner = self.inner();
        let was_up = inner.etcd_up;
        match result {
            Ok(()) => {
                inner.etcd_up = true;
                if !was_up {
                    tracing::info!(instance = %self.config.instance, "cluster: etcd reachable; the autoscaler takes part again");
                }
            }
            Err(e) => {
                inner.etcd_up = false;
                if was_up || inner.last_error.is_none() {
                    tracing::warn!(instance = %self.config.instance, error = %e, "cluster: etcd unreachable; serving the last membership, scaling paused");
                }
                inner.last_error = Some(e.to_string());
            }
        }
    }
}

/// Keeps this instance's part of the cluster until `stop` turns true, then
/// revokes the lease so another instance takes over at once.
pub(crate) async fn run(cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>) {
    let period = (cluster.config.lease / 4).clamp(Duration::from_millis(250), Duration::from_secs(1));
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(instance = %cluster.config.instance, prefix = %cluster.config.prefix, "cluster: coordinating through etcd");
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped(&mut stop) => break,
        }
        let result = cluster.round().await;
        cluster.record(result);
    }
    let lease = cluster.inner().lease.take();
    if let Some(id) = lease {
        cluster.inner().held = None;
        if let Err(e) = cluster.etcd.revoke(id).await {
            tracing::warn!(error = %e, "cluster: could not revoke the lease; it expires on its own");
        }
    }
}
