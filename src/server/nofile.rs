//! The open-file limit, raised at start to what the config may need.
//!
//! Startup, beside binding (`bind.rs`): every client connection and every
//! upstream connection is a file descriptor, and running out turns into
//! failed accepts and connects. The soft limit is raised towards the hard
//! one ([`raise`]); when even the hard limit cannot fit the config, the
//! caller warns with both figures. The estimate is the pure [`needed`].

use rustix::process::{getrlimit, setrlimit, Resource};

use crate::config::Config;

/// Descriptors kept aside for listeners, files, health probes and hooks.
const SLACK: u64 = 256;

/// What the config may hold open at once: each listener's
/// `max_connections` client connections, plus, per pool, one upstream
/// connection per concurrency slot of every backend it may have (static
/// ones and the autoscaler's `max`) and as many idle ones, plus slack.
pub fn needed(config: &Config) -> u64 {
    let clients = config.listeners.len() as u64 * config.limits.max_connections as u64;
    let upstream: u64 = config
        .pools
        .values()
        .map(|p| {
            let backends = p.backends.len() as u64 + p.autoscale.as_ref().map_or(0, |a| u64::from(a.max));
            let per_backend = u64::from(p.max_concurrency) + p.max_idle_per_backend as u64;
            backends.saturating_mul(per_backend)
        })
        .fold(0u64, u64::saturating_add);
    clients.saturating_add(upstream).saturating_add(SLACK)
}

/// The open-file limits after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the most an unprivileged process may set).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to `wanted`, or to the hard limit when
/// that is lower; never lowers it. `None` when the limit cannot be read.
pub fn raise(wanted: u64) -> Option<FdLimit> {
    let now = getrlimit(Resource::Nofile);
    let soft = now.current?;
    let hard = now.maximum.unwrap_or(u64::MAX);
    let target = wanted.min(hard);
    if target <= soft {
        return Some(FdLimit { soft, hard });
    }
    let raised = rustix::process::Rlimit {
        current: Some(target),
        maximum: now.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Some(FdLimit { soft: target, hard }),
        Err(_) => Some(FdLimit { soft, hard }),
    }
}
