//! One config generation as the data path sees it: immutable once
//! published.
//!
//! Data path. Each request loads the current [`Snapshot`] once (one atomic
//! increment) and uses only it: routes, pools, backends and balancers can
//! never be half of one config and half of another.

use std::sync::Arc;

use super::router::Router;
use crate::config::Config;
use crate::pool::Pool;

/// Everything a request needs, for one generation.
pub struct Snapshot {
    /// Bumped by every reload and every membership change.
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    /// Shared with later snapshots when only another pool changed.
    pub pools: Vec<Arc<Pool>>,
}

impl Snapshot {
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.name == name)
    }
}
