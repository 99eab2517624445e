//! Every metric tidegate exports: its name, type, unit and HELP text, in one
//! table; the Prometheus recorder for the control path's events; and the
//! few lines of exposition-format writing the admin listener needs.
//!
//! Leaf: imports no other tidegate module. Two kinds of family:
//! - **Live families** ([`Source::Live`]) are read from the data path's own
//!   atomics (per backend, per pool, per queue) when `/metrics` is scraped,
//!   by `admin/metrics.rs`. The hot path never touches a metrics registry,
//!   and a member that leaves the pool leaves `/metrics` with it: a series
//!   exists exactly while its backend is in the snapshot.
//! - **Event families** ([`Source::Recorder`]) count control-path events
//!   (reloads, hook calls, scaling decisions) through the `metrics` crate
//!   and `metrics-exporter-prometheus`, installed once by [`install`].
//!
//! Names carry their unit (`_seconds`, `_bytes`, `_total`).

use std::fmt::Write;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Where a family's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Rendered at scrape time from the snapshot's atomics.
    Live,
    /// Recorded through the `metrics` facade.
    Recorder,
}

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) source: Source,
    pub(crate) help: &'static str,
}

macro_rules! families {
    ($($konst:ident = $name:literal, $kind:ident, $source:ident, $help:literal;)*) => {
        $(
            #[doc = $help]
            pub(crate) const $konst: &str = $name;
        )*
        /// Every family, in the order `/metrics` lists them.
        pub(crate) const FAMILIES: &[Family] = &[
            $(Family { name: $name, kind: Kind::$kind, source: Source::$source, help: $help },)*
        ];
    };
}

families! {
    BUILD_INFO = "tidegate_build_info", Gauge, Live,
        "Always 1; the version label says which tidegate is running";
    REQUESTS_TOTAL = "tidegate_requests_total", Counter, Live,
        "Exchanges with a backend by pool, backend and status class (error = no response)";
    REQUEST_DURATION_SECONDS = "tidegate_request_duration_seconds", Histogram, Live,
        "Time from sending a request to a backend to its response head";
    BACKEND_IN_FLIGHT = "tidegate_backend_in_flight", Gauge, Live,
        "Requests in flight on a backend";
    POOL_BACKENDS = "tidegate_pool_backends", Gauge, Live,
        "Backends of a pool by state (active, warming, draining, down)";
    POOL_QUEUE_DEPTH = "tidegate_pool_queue_depth", Gauge, Live,
        "Requests waiting in a pool's queue";
    POOL_QUEUE_CLASS_DEPTH = "tidegate_pool_queue_class_depth", Gauge, Live,
        "Requests waiting in a pool's queue, by priority class (critical, normal, sheddable)";
    QUEUE_EVICTED_TOTAL = "tidegate_queue_evicted_total", Counter, Live,
        "Waiters a critical request evicted from a full queue (answered 503), by pool and the evicted class";
    CLIENT_CONNECTIONS_PARKED = "tidegate_client_connections_parked", Gauge, Live,
        "Idle HTTP/1.1 client connections parked: rested 1-2 s between requests, their buffers freed until the next request";
    POOL_DEMAND = "tidegate_pool_demand", Gauge, Live,
        "A pool's demand: requests in flight plus queued (what the autoscaler sizes for; sum it over tidegate instances)";
    QUEUE_WAIT_SECONDS = "tidegate_queue_wait_seconds", Histogram, Live,
        "Time requests that queued spent in a pool's queue";
    PROXY_ERRORS_TOTAL = "tidegate_proxy_errors_total", Counter, Live,
        "Responses tidegate generated itself (and failures after the head, code empty), by pool (empty before routing), code and reason";
    POOL_BYTES_TOTAL = "tidegate_pool_bytes_total", Counter, Live,
        "Body bytes through a pool: in = request bodies from clients, out = response bodies to clients";
    RATE_LIMITED_TOTAL = "tidegate_rate_limited_total", Counter, Live,
        "Requests a [[rate_limit]] rule refused with 429, by rule (kept across reloads that keep the name)";
    RATE_LIMIT_KEYS = "tidegate_rate_limit_keys", Gauge, Live,
        "Clients a rate limit remembers now (at most its max_keys; idle ones are swept every second)";
    RATE_LIMIT_LIMITED_CLIENTS = "tidegate_rate_limit_limited_clients", Gauge, Live,
        "Clients over a rate limit's budget at its last sweep";
    RATE_LIMIT_UNTRACKED_TOTAL = "tidegate_rate_limit_untracked_total", Counter, Live,
        "New clients admitted without being remembered because the rule's table held max_keys";
    CACHE_REQUESTS_TOTAL = "tidegate_cache_requests_total", Counter, Live,
        "Requests of cached routes, by pool and result (hit, miss, stale, bypass); a hit takes no backend slot";
    CACHE_COALESCED_TOTAL = "tidegate_cache_coalesced_total", Counter, Live,
        "Cache misses that waited for another request's fetch of the same key instead of going upstream, by pool";
    CACHE_REFRESHES_TOTAL = "tidegate_cache_refreshes_total", Counter, Live,
        "Background refreshes of stale objects (stale-while-revalidate)";
    CACHE_STORED_TOTAL = "tidegate_cache_stored_total", Counter, Live,
        "Responses stored in the micro-cache";
    CACHE_NOT_STORED_TOTAL = "tidegate_cache_not_stored_total", Counter, Live,
        "Fetched responses that could not be stored (RFC 9111 rules, max_object); their key is hit-for-miss for its ttl";
    CACHE_EVICTIONS_TOTAL = "tidegate_cache_evictions_total", Counter, Live,
        "Objects evicted from the micro-cache to stay within [cache] max_bytes";
    CACHE_BYTES = "tidegate_cache_bytes", Gauge, Live,
        "Bytes the micro-cache holds (bodies, heads and keys)";
    CACHE_ENTRIES = "tidegate_cache_entries", Gauge, Live,
        "Objects the micro-cache holds";
    ACCESS_LOG_DROPPED_TOTAL = "tidegate_access_log_dropped_total", Counter, Live,
        "Access-log lines dropped because the writer was behind (the proxy never waits for it)";
    CONFIG_GENERATION = "tidegate_config_generation", Gauge, Live,
        "Snapshot generation: bumped by every reload and every membership change";
    CONFIG_LAST_RELOAD_SUCCESS = "tidegate_config_last_reload_success_timestamp_seconds", Gauge, Live,
        "When the config last loaded successfully (start or reload), Unix seconds";
    PROCESS_CPU = "process_cpu_seconds_total", Counter, Live,
        "User and system CPU time the process has used";
    PROCESS_RSS = "process_resident_memory_bytes", Gauge, Live,
        "Resident memory of the process";
    PROCESS_OPEN_FDS = "process_open_fds", Gauge, Live,
        "Open file descriptors (client and backend connections, listeners, files)";
    PROCESS_MAX_FDS = "process_max_fds", Gauge, Live,
        "The open file descriptor limit (RLIMIT_NOFILE)";
    PROCESS_START = "process_start_time_seconds", Gauge, Live,
        "When the process started, Unix seconds";
    CLUSTER_LEADER = "tidegate_cluster_leader", Gauge, Live,
        "1 while this instance leads the etcd cluster (decides, calls hooks), else 0; absent without [cluster]";
    CLUSTER_ETCD_UP = "tidegate_cluster_etcd_up", Gauge, Live,
        "1 if etcd answered this instance's last round, else 0 (scaling pauses); absent without [cluster]";
    CONFIG_RELOADS_TOTAL = "tidegate_config_reloads_total", Counter, Recorder,
        "Config reload attempts by result";
    POOL_DESIRED_BACKENDS = "tidegate_pool_desired_backends", Gauge, Recorder,
        "The autoscaler's wanted pool size";
    AUTOSCALE_DECISIONS_TOTAL = "tidegate_autoscale_decisions_total", Counter, Recorder,
        "Changes of the autoscaler's wanted size by direction";
    HOOK_CALLS_TOTAL = "tidegate_hook_calls_total", Counter, Recorder,
        "Provisioning hook calls by result";
    REPLACED_TOTAL = "tidegate_autoscale_replaced_total", Counter, Recorder,
        "Provisioned members replaced for not becoming healthy within ready_deadline";
    DISCOVERY_RESOLUTIONS_TOTAL = "tidegate_discovery_resolutions_total", Counter, Recorder,
        "DNS resolutions of a pool's backends_from by result (ok, empty, error; the last two keep the members)";
}

/// Upper bounds of every `_seconds` histogram's buckets: 1 ms to 30 s.
pub(crate) const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same
/// handle). Call before anything records a control-path event.
pub(crate) fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; control-path events will not be exported");
        }
        for f in FAMILIES.iter().filter(|f| f.source == Source::Recorder) {
            match f.kind {
                Kind::Counter => metrics::describe_counter!(f.name, f.help),
                Kind::Gauge => metrics::describe_gauge!(f.name, f.help),
                Kind::Histogram => metrics::describe_histogram!(f.name, f.help),
            }
        }
        handle
    })
}

/// The family named `name` (a constant of this module).
pub(crate) fn family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

/// Writes the `# HELP` and `# TYPE` lines of a family.
pub(crate) fn write_header(out: &mut String, f: &Family) {
    let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
    let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
}

/// Writes one sample line: `name{k="v",...} value`. Label values are
/// escaped as the exposition format requires.
pub(crate) fn write_sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Writes a histogram's `_bucket`, `_sum` and `_count` lines from
/// cumulative bucket counts (one per [`SECONDS_BUCKETS`] bound), the total
/// count and the sum in seconds.
pub(crate) fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    cumulative: &[u64],
    count: u64,
    sum: f64,
) {
    let bucket = format!("{name}_bucket");
    let mut with_le: Vec<(&str, &str)> = labels.to_vec();
    let bounds: Vec<String> = SECONDS_BUCKETS.iter().map(|b| b.to_string()).collect();
    for (le, n) in bounds.iter().zip(cumulative) {
        with_le.push(("le", le));
        write_sample(out, &bucket, &with_le, *n as f64);
        with_le.pop();
    }
    with_le.push(("le", "+Inf"));
    write_sample(out, &bucket, &with_le, count as f64);
    write_sample(out, &format!("{name}_sum"), labels, sum);
    write_sample(out, &format!("{name}_count"), labels, count as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_with_a_unit_and_has_help() {
        for f in FAMILIES {
            // tidegate's own, or the standard process collector's names.
            assert!(
                f.name.starts_with("tidegate_") || f.name.starts_with("process_"),
                "{}",
                f.name
            );
            assert!(!f.help.is_empty(), "{}", f.name);
            if f.kind == Kind::Counter {
                assert!(f.name.ends_with("_total"), "{}", f.name);
            }
            if f.kind == Kind::Histogram {
                assert!(f.name.ends_with("_seconds"), "{}", f.name);
            }
        }
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "a name is listed twice");
    }

    #[test]
    fn samples_escape_label_values() {
        let mut out = String::new();
        write_sample(&mut out, "x_total", &[("pool", "a\"b\\c\nd")], 2.0);
        assert_eq!(out, "x_total{pool=\"a\\\"b\\\\c\\nd\"} 2\n");
    }

    #[test]
    fn histograms_end_with_inf_sum_and_count() {
        let mut out = String::new();
        let cumulative = [1u64; 14];
        write_histogram(&mut out, "h_seconds", &[("pool", "p")], &cumulative, 3, 0.5);
        assert!(out.contains("h_seconds_bucket{pool=\"p\",le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("h_seconds_bucket{pool=\"p\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(
            out.ends_with("h_seconds_sum{pool=\"p\"} 0.5\nh_seconds_count{pool=\"p\"} 3\n"),
            "{out}"
        );
    }
}
