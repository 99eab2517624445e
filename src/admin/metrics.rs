//! `GET /metrics`: the live families read from the snapshot's atomics,
//! followed by the control-path events the recorder holds.
//!
//! Control path, at scrape time only. Names and HELP texts come from
//! `telemetry.rs`. A backend's series are written while it is in the
//! snapshot (serving or draining) and vanish with it, so an autoscaled pool
//! on ephemeral ports does not leak series.

use super::{process, Shared};
use crate::access_log;
use crate::config::Priority;
use crate::pool::backend::CLASSES;
use crate::pool::{BackendState, Pool};
use crate::proxy::{CODES, REASONS};
use crate::telemetry::{self as t, write_header, write_histogram, write_sample};

const STATES: [BackendState; 4] = [
    BackendState::Active,
    BackendState::Warming,
    BackendState::Draining,
    BackendState::Down,
];

/// The whole exposition text.
pub(super) fn render(shared: &Shared) -> String {
    let state = &shared.view.state;
    let snapshot = state.load();
    let pools = &snapshot.pools;
    let mut out = String::with_capacity(4096 + pools.len() * 2048);

    header(&mut out, t::BUILD_INFO);
    write_sample(&mut out, t::BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    header(&mut out, t::CONFIG_GENERATION);
    write_sample(&mut out, t::CONFIG_GENERATION, &[], snapshot.generation as f64);
    header(&mut out, t::CONFIG_LAST_RELOAD_SUCCESS);
    write_sample(
        &mut out,
        t::CONFIG_LAST_RELOAD_SUCCESS,
        &[],
        shared.view.reloads.load().last_success_unix_ms as f64 / 1000.0,
    );
    if let Some(cluster) = shared.cluster.as_ref().map(|c| c.status()) {
        header(&mut out, t::CLUSTER_LEADER);
        write_sample(
            &mut out,
            t::CLUSTER_LEADER,
            &[],
            f64::from(u8::from(cluster.role == "leader")),
        );
        header(&mut out, t::CLUSTER_ETCD_UP);
        write_sample(
            &mut out,
            t::CLUSTER_ETCD_UP,
            &[],
            f64::from(u8::from(cluster.etcd_reachable)),
        );
    }
    if let Some(p) = process::read() {
        let gauges = [
            (t::PROCESS_CPU, Some(p.cpu_seconds)),
            (t::PROCESS_RSS, Some(p.resident_bytes)),
            (t::PROCESS_OPEN_FDS, Some(p.open_fds)),
            (t::PROCESS_MAX_FDS, p.max_fds),
            (t::PROCESS_START, p.start_time_seconds),
        ];
        for (name, value) in gauges {
            if let Some(v) = value {
                header(&mut out, name);
                write_sample(&mut out, name, &[], v);
            }
        }
    }

    header(&mut out, t::REQUESTS_TOTAL);
    for_backends(pools, |pool, b, addr| {
        for (class, n) in CLASSES.iter().zip(b.response_counts()) {
            write_sample(
                &mut out,
                t::REQUESTS_TOTAL,
                &[("pool", pool), ("backend", addr), ("code", class)],
                n as f64,
            );
        }
    });
    header(&mut out, t::REQUEST_DURATION_SECONDS);
    for_backends(pools, |pool, b, addr| {
        let (cumulative, count, sum) = b.duration().read();
        write_histogram(
            &mut out,
            t::REQUEST_DURATION_SECONDS,
            &[("pool", pool), ("backend", addr)],
            &cumulative,
            count,
            sum,
        );
    });
    header(&mut out, t::BACKEND_IN_FLIGHT);
    for_backends(pools, |pool, b, addr| {
        write_sample(
            &mut out,
            t::BACKEND_IN_FLIGHT,
            &[("pool", pool), ("backend", addr)],
            f64::from(b.in_flight()),
        );
    });

    header(&mut out, t::POOL_BACKENDS);
    for p in pools {
        let mut counts = p.state_counts();
        counts[BackendState::Draining as usize] += p.draining.iter().filter(|b| b.in_flight() > 0).count();
        for s in STATES {
            write_sample(
                &mut out,
                t::POOL_BACKENDS,
                &[("pool", &p.name), ("state", s.as_str())],
                counts[s as usize] as f64,
            );
        }
    }
    header(&mut out, t::POOL_QUEUE_DEPTH);
    for p in pools {
        write_sample(
            &mut out,
            t::POOL_QUEUE_DEPTH,
            &[("pool", &p.name)],
            p.shared.queue.depth() as f64,
        );
    }
    header(&mut out, t::POOL_QUEUE_CLASS_DEPTH);
    for p in pools {
        for (class, n) in Priority::ALL.iter().zip(p.shared.queue.class_depths()) {
            write_sample(
                &mut out,
                t::POOL_QUEUE_CLASS_DEPTH,
                &[("pool", &p.name), ("class", class.as_str())],
                n as f64,
            );
        }
    }
    header(&mut out, t::QUEUE_EVICTED_TOTAL);
    for p in pools {
        for (class, n) in Priority::ALL.iter().zip(p.shared.queue.evicted()) {
            if *class != Priority::Critical {
                write_sample(
                    &mut out,
                    t::QUEUE_EVICTED_TOTAL,
                    &[("pool", &p.name), ("class", class.as_str())],
                    n as f64,
                );
            }
        }
    }
    header(&mut out, t::POOL_DEMAND);
    for p in pools {
        write_sample(&mut out, t::POOL_DEMAND, &[("pool", &p.name)], p.demand() as f64);
    }
    header(&mut out, t::QUEUE_WAIT_SECONDS);
    for p in pools {
        let (cumulative, count, sum) = p.shared.queue.wait_histogram().read();
        write_histogram(
            &mut out,
            t::QUEUE_WAIT_SECONDS,
            &[("pool", &p.name)],
            &cumulative,
            count,
            sum,
        );
    }

    header(&mut out, t::CLIENT_CONNECTIONS_PARKED);
    write_sample(&mut out, t::CLIENT_CONNECTIONS_PARKED, &[], state.parked() as f64);
    header(&mut out, t::PROXY_ERRORS_TOTAL);
    let codes: Vec<String> = CODES
        .iter()
        .map(|&c| if c == 0 { String::new() } else { c.to_string() })
        .collect();
    let unrouted = state.unrouted_errors();
    for ((reason, code), n) in REASONS.iter().zip(&codes).zip(unrouted) {
        if n > 0 {
            write_sample(
                &mut out,
                t::PROXY_ERRORS_TOTAL,
                &[("pool", ""), ("code", code), ("reason", reason)],
                n as f64,
            );
        }
    }
    for p in pools {
        for ((reason, code), n) in REASONS.iter().zip(&codes).zip(p.shared.error_counts()) {
            write_sample(
                &mut out,
                t::PROXY_ERRORS_TOTAL,
                &[("pool", &p.name), ("code", code), ("reason", reason)],
                n as f64,
            );
        }
    }
    header(&mut out, t::POOL_BYTES_TOTAL);
    for p in pools {
        let (bytes_in, bytes_out) = p.shared.bytes();
        for (direction, n) in [("in", bytes_in), ("out", bytes_out)] {
            write_sample(
                &mut out,
                t::POOL_BYTES_TOTAL,
                &[("pool", &p.name), ("direction", direction)],
                n as f64,
            );
        }
    }
    let limits: Vec<_> = snapshot.rate_limits.iter().map(|r| (&r.name, r.counts())).collect();
    let per_rule = [
        t::RATE_LIMITED_TOTAL,
        t::RATE_LIMIT_KEYS,
        t::RATE_LIMIT_LIMITED_CLIENTS,
        t::RATE_LIMIT_UNTRACKED_TOTAL,
    ];
    for family in per_rule {
        header(&mut out, family);
        for (name, c) in &limits {
            let value = match family {
                t::RATE_LIMITED_TOTAL => c.limited_total as f64,
                t::RATE_LIMIT_KEYS => c.keys as f64,
                t::RATE_LIMIT_LIMITED_CLIENTS => c.limited_now.clients as f64,
                _ => c.untracked_total as f64,
            };
            write_sample(&mut out, family, &[("rule", name)], value);
        }
    }
    if let Some(cache) = &snapshot.cache {
        cache_metrics(&mut out, &cache.counts());
    }
    header(&mut out, t::ACCESS_LOG_DROPPED_TOTAL);
    write_sample(&mut out, t::ACCESS_LOG_DROPPED_TOTAL, &[], access_log::dropped() as f64);

    let recorder = t::install();
    recorder.run_upkeep();
    out.push_str(&recorder.render());
    out
}

/// The HELP and TYPE lines of the family `name`.
fn header(out: &mut String, name: &str) {
    if let Some(f) = t::family(name) {
        write_header(out, f);
    }
}

/// The micro-cache's families.
fn cache_metrics(out: &mut String, c: &crate::cache::Counts) {
    header(out, t::CACHE_REQUESTS_TOTAL);
    for (pool, results, _) in &c.pools {
        for (outcome, n) in crate::cache::Outcome::ALL.iter().zip(results) {
            write_sample(
                out,
                t::CACHE_REQUESTS_TOTAL,
                &[("pool", pool), ("result", outcome.as_str())],
                *n as f64,
            );
        }
    }
    header(out, t::CACHE_COALESCED_TOTAL);
    for (pool, _, coalesced) in &c.pools {
        write_sample(out, t::CACHE_COALESCED_TOTAL, &[("pool", pool)], *coalesced as f64);
    }
    for (family, value) in [
        (t::CACHE_REFRESHES_TOTAL, c.refreshes),
        (t::CACHE_STORED_TOTAL, c.stored),
        (t::CACHE_NOT_STORED_TOTAL, c.not_stored),
        (t::CACHE_EVICTIONS_TOTAL, c.evictions),
        (t::CACHE_BYTES, c.bytes),
        (t::CACHE_ENTRIES, c.entries),
    ] {
        header(out, family);
        write_sample(out, family, &[], value as f64);
    }
}

/// Calls `f` for every backend of every pool, serving or draining, with
/// the pool name and the address as text.
fn for_backends(pools: &[std::sync::Arc<Pool>], mut f: impl FnMut(&str, &crate::pool::Backend, &str)) {
    for p in pools {
        for b in p.backends.iter().chain(&p.draining) {
            f(&p.name, b, &b.address.to_string());
        }
    }
}
