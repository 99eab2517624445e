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
/// `max_connections` client connections, each with one upstream
/// connection (HTTP/2 streams share one), plus slack.
pub fn needed(config: &Config) -> u64 {
    let clients = config.listeners.len() as u64 * config.limits.max_connections as u64;
    clients.saturating_mul(2).saturating_add(SLACK)
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
