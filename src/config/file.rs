//! The raw serde mirror of `tidegate.toml`: exactly what the file may say,
//! nothing derived.
//!
//! Control path only. Every table denies unknown keys so a typo is an error
//! with a position, not a silently ignored setting. Every value that is
//! checked after parsing (numbers and durations against their ranges, names,
//! addresses) is `Spanned` so `validate.rs` can point at it. Defaults are
//! applied in `validate.rs`, never here, so "absent" stays distinguishable
//! from "set to the default". (Inside the internally tagged `hook` table
//! serde cannot keep spans; errors there point at the table.)

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::units::{ByteSize, HumanDuration, Rate};

/// A duration with its place in the file.
pub(crate) type Dur = Spanned<HumanDuration>;
/// A size with its place in the file.
pub(crate) type Size = Spanned<ByteSize>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) runtime: RawRuntime,
    pub(crate) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(crate) limits: RawLimits,
    #[serde(default, rename = "listener")]
    pub(crate) listeners: Vec<RawListener>,
    #[serde(default, rename = "route")]
    pub(crate) routes: Vec<RawRoute>,
    #[serde(default)]
    pub(crate) pools: BTreeMap<String, Spanned<RawPool>>,
    pub(crate) access_log: Option<RawAccessLog>,
    #[serde(default, rename = "rate_limit")]
    pub(crate) rate_limits: Vec<RawRateLimit>,
    pub(crate) cluster: Option<RawCluster>,
    /// `[cache]`: the micro-cache's global budget.
    pub(crate) cache: Option<RawCacheGlobal>,
}

/// `[cache]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCacheGlobal {
    pub(crate) max_bytes: Option<Size>,
}

/// A route's `cache = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteCache {
    pub(crate) ttl: Option<Dur>,
    pub(crate) grace: Option<Dur>,
    pub(crate) max_object: Option<Size>,
    pub(crate) lock_timeout: Option<Dur>,
    /// Query parameters left out of the key (`*` at the end: a prefix).
    pub(crate) ignore_query: Option<Spanned<Vec<String>>>,
    /// Requests carrying any of these cookies skip the cache.
    pub(crate) bypass_cookies: Option<Spanned<Vec<String>>>,
}

/// `[cluster]`: several instances coordinated through etcd.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub(crate) instance: Option<Spanned<String>>,
    pub(crate) etcd: RawEtcd,
}

/// `[cluster] etcd = { endpoints = [...], prefix = "...", lease = "5s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEtcd {
    pub(crate) endpoints: Spanned<Vec<String>>,
    pub(crate) prefix: Option<Spanned<String>>,
    pub(crate) lease: Option<Dur>,
}

/// `[[rate_limit]]`: a per-client GCRA limit on the requests a rule matches.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub(crate) name: Spanned<String>,
    #[serde(rename = "match")]
    pub(crate) matches: Option<RawMatch>,
    /// `client_ip`, `header:<name>` or `cookie:<name>`.
    pub(crate) key: Option<Spanned<String>>,
    pub(crate) rate: Spanned<Rate>,
    pub(crate) burst: Option<Spanned<u64>>,
    pub(crate) ipv6_prefix: Option<Spanned<u64>>,
    pub(crate) max_keys: Option<Spanned<u64>>,
}

/// Which requests a rule applies to (absent keys match anything).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) path_prefix: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub(crate) format: Option<Spanned<String>>,
    pub(crate) path: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub(crate) worker_threads: Option<Spanned<u64>>,
    pub(crate) shutdown_timeout: Option<Dur>,
    /// Not ready, still serving, for this long before the drain.
    pub(crate) shutdown_delay: Option<Dur>,
    /// Where the autoscaler keeps its per-minute history.
    pub(crate) state_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) token: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) allowed_hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) max_connections: Option<Spanned<u64>>,
    pub(crate) header_read_timeout: Option<Dur>,
    pub(crate) max_header_bytes: Option<Size>,
    pub(crate) max_headers: Option<Spanned<u64>>,
    pub(crate) tls_handshake_timeout: Option<Dur>,
    pub(crate) h2_max_concurrent_streams: Option<Spanned<u64>>,
    pub(crate) client_body_timeout: Option<Dur>,
    pub(crate) client_send_timeout: Option<Dur>,
    pub(crate) tunnel_idle_timeout: Option<Dur>,
    pub(crate) max_response_header_bytes: Option<Size>,
    pub(crate) max_response_headers: Option<Spanned<u64>>,
    pub(crate) trusted_proxies: Option<Spanned<Vec<String>>>,
    /// The default `max_keys` of every `[[rate_limit]]`.
    pub(crate) rate_limit_max_keys: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: Spanned<String>,
    pub(crate) listen: Spanned<String>,
    pub(crate) tls: Option<RawTls>,
    pub(crate) proxy_protocol: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) certificates: Spanned<Vec<RawCertificate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub(crate) cert: Spanned<PathBuf>,
    pub(crate) key: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// Protocols a client may switch to (`Upgrade`), e.g. `["websocket"]`.
    pub(crate) upgrade: Option<Spanned<Vec<String>>>,
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) path_prefix: Option<Spanned<String>>,
    pub(crate) pool: Spanned<String>,
    pub(crate) max_body: Option<Size>,
    /// The route's class in its pool's queue.
    pub(crate) priority: Option<RawPriority>,
    /// The micro-cache for this route's GET and HEAD requests.
    pub(crate) cache: Option<RawRouteCache>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawPriority {
    Critical,
    Normal,
    Sheddable,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub(crate) upstream_tls: Option<RawUpstreamTls>,
    pub(crate) balance: Option<RawBalance>,
    pub(crate) hash_key: Option<Spanned<String>>,
    pub(crate) max_concurrency: Option<Spanned<u64>>,
    pub(crate) queue: Option<RawQueue>,
    pub(crate) timeouts: Option<RawTimeouts>,
    pub(crate) upstream: Option<RawUpstream>,
    pub(crate) retries: Option<RawRetries>,
    pub(crate) max_idle_per_backend: Option<Spanned<u64>>,
    pub(crate) health: Option<RawHealth>,
    pub(crate) passive: Option<RawPassive>,
    pub(crate) slow_start: Option<Dur>,
    pub(crate) fail_open: Option<bool>,
    pub(crate) autoscale: Option<Spanned<RawAutoscale>>,
    pub(crate) backends_from: Option<Spanned<RawBackendsFrom>>,
    #[serde(default)]
    pub(crate) backends: Vec<RawBackend>,
}

/// `backends_from = { dns = "name:port" | "_srv._tcp.name", interval, nameserver }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackendsFrom {
    pub(crate) dns: Spanned<String>,
    pub(crate) interval: Option<Dur>,
    pub(crate) nameserver: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) server_name: Option<Spanned<String>>,
    pub(crate) ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAutoscale {
    pub(crate) min: Option<Spanned<u64>>,
    pub(crate) max: Option<Spanned<u64>>,
    pub(crate) dry_run: Option<bool>,
    /// `hook` (default: call the provisioner) or `export` (decide and
    /// export only).
    pub(crate) mode: Option<Spanned<RawAutoscaleMode>>,
    /// Required unless `mode = "export"`.
    pub(crate) hook: Option<Spanned<RawHook>>,
    /// Initial estimate of the time a new backend takes to become ready.
    pub(crate) provisioning_delay: Option<Dur>,
    /// Scale down only below the highest need of this window.
    pub(crate) scale_down_window: Option<Dur>,
    /// Queue-wait SLO the policy sizes for.
    pub(crate) slo: Option<Dur>,
    /// A provisioned member not healthy within this long is replaced.
    pub(crate) ready_deadline: Option<Dur>,
    /// A draining member is removed after this long even with requests open.
    pub(crate) drain_timeout: Option<Dur>,
    /// At most this many backends more / fewer per decision.
    pub(crate) max_step_up: Option<Spanned<u64>>,
    pub(crate) max_step_down: Option<Spanned<u64>>,
    /// No scale-up within this long of the last one; no scale-down within
    /// this long of the last change.
    pub(crate) cooldown_up: Option<Dur>,
    pub(crate) cooldown_down: Option<Dur>,
    /// Known peaks: `[[pools.X.autoscale.schedule]]`.
    #[serde(default)]
    pub(crate) schedule: Vec<RawScheduleEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScheduleEntry {
    pub(crate) start: Spanned<String>,
    pub(crate) end: Spanned<String>,
    pub(crate) min: Spanned<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawAutoscaleMode {
    Hook,
    Export,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RawHook {
    Exec {
        command: Vec<String>,
        timeout: Option<HumanDuration>,
        /// Environment variables passed on besides the default allow-list.
        #[serde(default)]
        env: Vec<String>,
    },
    Webhook {
        url: String,
        timeout: Option<HumanDuration>,
        /// PEM CAs for an https:// URL (default: the system's).
        ca: Option<String>,
    },
    Local {
        service_time: Option<HumanDuration>,
        concurrency: Option<u64>,
        timeout: Option<HumanDuration>,
    },
    /// Containers through the Docker Engine API.
    Docker {
        image: String,
        network: String,
        port: Option<u64>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        socket: Option<String>,
        command: Option<Vec<String>>,
        timeout: Option<HumanDuration>,
    },
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawCheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub(crate) kind: Option<RawCheckKind>,
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) interval: Option<Dur>,
    pub(crate) timeout: Option<Dur>,
    pub(crate) healthy: Option<Spanned<u64>>,
    pub(crate) unhealthy: Option<Spanned<u64>>,
    /// Accepted status range, e.g. "200-399".
    pub(crate) expect: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassive {
    pub(crate) consecutive_failures: Option<Spanned<u64>>,
    pub(crate) ejection: Option<Dur>,
    pub(crate) max_ejection: Option<Dur>,
    pub(crate) max_ejected_percent: Option<Spanned<u64>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawBalance {
    LeastConn,
    P2c,
    RoundRobin,
    PeakEwma,
    Hash,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawUpstream {
    Http1,
    H2c,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueue {
    pub(crate) max_depth: Option<Spanned<u64>>,
    pub(crate) timeout: Option<Dur>,
    /// Most of `max_depth` sheddable requests may hold, 0.0 to 1.0.
    pub(crate) sheddable_share: Option<Spanned<f64>>,
    /// Longest a sheddable request waits.
    pub(crate) sheddable_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub(crate) connect: Option<Dur>,
    pub(crate) response_header: Option<Dur>,
    pub(crate) idle: Option<Dur>,
    /// No byte from the backend for this long after the head.
    pub(crate) read: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetries {
    /// Other backends tried after a connect failure.
    pub(crate) connect: Option<Spanned<u64>>,
    /// Whether an idempotent request may be resent after the backend failed
    /// mid-exchange (off by default: the backend may have acted on it).
    pub(crate) idempotent: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    /// `ip:port` or `host.name:port` (resolved when the file is loaded).
    pub(crate) address: Spanned<String>,
    pub(crate) weight: Option<Spanned<u64>>,
}
