//! Host + longest path prefix -> route, precompiled once per snapshot.
//!
//! Data path, pure: [`Router::route`] does no allocation on the common path
//! (a host already in lower case) and takes no lock. Routes naming a host
//! win over host-less ones; among those, the longest prefix.

use std::collections::HashMap;

use crate::config::Route;

/// A routing decision: the route's index in the config's `routes` and the
/// index of its pool in the snapshot's `pools`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteTarget {
    pub(crate) route: usize,
    pub(crate) pool: usize,
}

struct RouteEntry {
    prefix: String,
    target: RouteTarget,
}

#[derive(Default)]
pub(crate) struct Router {
    by_host: HashMap<String, Vec<RouteEntry>>,
    any_host: Vec<RouteEntry>,
}

impl Router {
    /// `pool_index` maps each pool name to its position in the snapshot.
    pub(crate) fn new(routes: &[Route], pool_index: &HashMap<&str, usize>) -> Router {
        let mut r = Router::default();
        for (i, route) in routes.iter().enumerate() {
            let entry = RouteEntry {
                prefix: route.path_prefix.clone(),
                target: RouteTarget {
                    route: i,
                    pool: pool_index[route.pool.as_str()],
                },
            };
            match &route.host {
                Some(h) => r.by_host.entry(h.clone()).or_default().push(entry),
                None => r.any_host.push(entry),
            }
        }
        for list in r.by_host.values_mut().chain(std::iter::once(&mut r.any_host)) {
            list.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        }
        r
    }

    /// `host` without port (any case); `path` as in the request target.
    pub(crate) fn route(&self, host: Option<&str>, path: &str) -> Option<RouteTarget> {
        let longest = |list: &[RouteEntry]| list.iter().find(|e| path.starts_with(&e.prefix)).map(|e| e.target);
        if let Some(host) = host {
            if !self.by_host.is_empty() {
                let hit = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.by_host.get(&host.to_ascii_lowercase())
                } else {
                    self.by_host.get(host)
                };
                if let Some(t) = hit.and_then(|list| longest(list)) {
                    return Some(t);
                }
            }
        }
        longest(&self.any_host)
    }
}
