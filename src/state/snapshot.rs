//! One config generation as the data path sees it: immutable once
//! published.
//!
//! Data path. Each request loads the current [`Snapshot`] once (one atomic
//! increment) and uses only it: routes, pools, backends and balancers can
//! never be half of one config and half of another.

use std::sync::Arc;

use super::router::Router;
use crate::access_log::AccessLog;
use crate::cache::Cache;
use crate::config::Config;
use crate::pool::Pool;
use crate::traffic::ratelimit::RateLimit;

/// Everything a request needs, for one generation.
pub(crate) struct Snapshot {
    /// Bumped by every reload and every membership change.
    pub(crate) generation: u64,
    pub(crate) config: Arc<Config>,
    pub(crate) router: Router,
    /// Shared with later snapshots when only another pool changed.
    pub(crate) pools: Vec<Arc<Pool>>,
    /// The `[access_log]` writer, kept across reloads that keep its table.
    pub(crate) access_log: Option<Arc<AccessLog>>,
    /// `[[rate_limit]]` rules in file order; each one's client table is
    /// carried by name from the previous snapshot.
    pub(crate) rate_limits: Vec<Arc<RateLimit>>,
    /// The micro-cache, when a route has `cache = { ... }`: the same object
    /// from snapshot to snapshot while `[cache] max_bytes` stays, so a
    /// reload keeps what is stored.
    pub(crate) cache: Option<Arc<Cache>>,
}

impl Snapshot {
    pub(crate) fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.name == name)
    }
}
