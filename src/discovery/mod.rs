//! Members from DNS: every pool with `backends_from = { dns = ... }` is
//! re-resolved on its interval and its answer becomes the pool's dynamic
//! members (`State::set_members`), beside the static `backends`.
//!
//! Control path. One loop per pool, started and stopped as reloads add,
//! change or remove the table, like the autoscaler's. Members that appear
//! join `warming` and take traffic once a probe passes; members that
//! vanish drain. A failed resolution, or one that answers nothing, keeps
//! the members applied last: a DNS outage or a name deleted by mistake
//! never empties a serving pool. Kubernetes' headless Services and Consul
//! answer A/AAAA and SRV the same way, so one resolver serves all of them.

mod dns;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::config::DnsMembers;
use crate::shutdown::stopped;
use crate::state::State;
use crate::telemetry::DISCOVERY_RESOLUTIONS_TOTAL;

pub(crate) use dns::{ResolveError, Resolver};

/// Most members one name may bring; the rest of a larger answer is left
/// out (and the log says so).
pub(crate) const MAX_MEMBERS: usize = 1024;

/// Runs every DNS pool's loop until `stop` turns true.
pub(crate) async fn run(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut changes = state.subscribe();
    let mut loops: JoinSet<()> = JoinSet::new();
    let mut by_pool: HashMap<String, (DnsMembers, AbortHandle)> = HashMap::new();
    loop {
        while loops.try_join_next().is_some() {}
        let snapshot = state.load();
        // A loop whose pool is gone or whose table changed ends; the new
        // table gets a new loop (a changed name is resolved at once).
        by_pool.retain(|name, (from, task)| {
            let keep = !task.is_finished()
                && snapshot
                    .pool(name)
                    .and_then(|p| p.config.backends_from.as_ref())
                    .is_some_and(|now| now == from);
            if !keep {
                task.abort();
            }
            keep
        });
        for pool in &snapshot.pools {
            let Some(from) = &pool.config.backends_from else {
                continue;
            };
            if by_pool.contains_key(&*pool.name) {
                continue;
            }
            let task = loops.spawn(pool_loop(Arc::downgrade(&state), pool.name.to_string(), from.clone()));
            by_pool.insert(pool.name.to_string(), (from.clone(), task));
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = stopped(&mut stop) => break,
        }
    }
    loops.shutdown().await;
}

/// Resolves `from` every interval and applies the answer to `pool`.
async fn pool_loop(state: Weak<State>, pool: String, from: DnsMembers) {
    let resolver = match Resolver::new(&from) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(pool = %pool, name = %from.name, error = %e, "cannot set up the DNS resolver; the pool keeps its members");
            return;
        }
    };
    let mut every = tokio::time::interval(from.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Result<usize, String>> = None;
    loop {
        every.tick().await;
        let answer = tokio::time::timeout(from.interval.max(Duration::from_secs(1)), resolver.members())
            .await
            .unwrap_or(Err(ResolveError::Timeout));
        let Some(state) = state.upgrade() else { return };
        let (result, outcome) = match answer.map(|found| settle(found, MAX_MEMBERS)) {
            Ok(Settled::Members { members, left_out }) => {
                if left_out > 0 {
                    tracing::warn!(pool = %pool, name = %from.name, left_out, kept = MAX_MEMBERS, "DNS answered more members than a pool takes");
                }
                let n = members.len();
                if state.set_members(&pool, members).is_none() {
                    return;
                }
                ("ok", Ok(n))
            }
            Ok(Settled::Empty) => ("empty", Err("the name has no addresses".to_string())),
            Err(e) => ("error", Err(e.to_string())),
        };
        metrics::counter!(DISCOVERY_RESOLUTIONS_TOTAL, "pool" => pool.clone(), "result" => result).increment(1);
        report(&pool, &from.name, last.as_ref(), &outcome);
        last = Some(outcome);
    }
}

/// Logs a change of outcome (not every resolution).
fn report(pool: &str, name: &str, last: Option<&Result<usize, String>>, now: &Result<usize, String>) {
    if last == Some(now) {
        return;
    }
    match now {
        Ok(n) => tracing::info!(pool = %pool, name = %name, members = n, "members from DNS"),
        Err(e) => {
            tracing::warn!(pool = %pool, name = %name, error = %e, "DNS resolution failed; the pool keeps the members it has")
        }
    }
}

/// What a resolution's addresses come to.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// Apply these (sorted, each once) and say how many were left out.
    Members { members: Vec<SocketAddr>, left_out: usize },
    /// Nothing: keep what the pool has.
    Empty,
}

/// Pure: sorted, deduplicated, at most `cap` (the lowest addresses, so
/// every instance that reads the same answer keeps the same ones).
fn settle(mut found: Vec<SocketAddr>, cap: usize) -> Settled {
    found.sort_unstable();
    found.dedup();
    if found.is_empty() {
        return Settled::Empty;
    }
    let left_out = found.len().saturating_sub(cap);
    found.truncate(cap);
    Settled::Members {
        members: found,
        left_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_answer_is_sorted_deduplicated_and_capped() {
        assert_eq!(
            settle(vec![a("10.0.0.2:80"), a("10.0.0.1:80"), a("10.0.0.2:80")], 8),
            Settled::Members {
                members: vec![a("10.0.0.1:80"), a("10.0.0.2:80")],
                left_out: 0
            }
        );
        assert_eq!(
            settle(vec![a("10.0.0.3:80"), a("10.0.0.1:80"), a("10.0.0.2:80")], 2),
            Settled::Members {
                members: vec![a("10.0.0.1:80"), a("10.0.0.2:80")],
                left_out: 1
            }
        );
    }

    #[test]
    fn an_empty_answer_keeps_the_members() {
        assert_eq!(settle(Vec::new(), 8), Settled::Empty);
    }
}
