//! The raw serde mirror of `tidegate.toml`: exactly what the file may say,
//! nothing derived.
//!
//! Control path only. Every table denies unknown keys so a typo is an error
//! with a position, not a silently ignored setting. Values that need a
//! cross-check after parsing (pool names, addresses, weights) are `Spanned`
//! so `validate.rs` can point at them. Defaults are applied in `validate.rs`,
//! never here, so "absent" stays distinguishable from "set to the default".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::units::{ByteSize, HumanDuration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub runtime: RawRuntime,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub pools: BTreeMap<String, Spanned<RawPool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<Spanned<usize>>,
    pub shutdown_timeout: Option<HumanDuration>,
    /// Where the autoscaler keeps its per-minute history.
    pub state_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<SocketAddr>>,
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<Spanned<usize>>,
    pub header_read_timeout: Option<HumanDuration>,
    pub max_header_bytes: Option<Spanned<ByteSize>>,
    pub max_headers: Option<Spanned<usize>>,
    pub tls_handshake_timeout: Option<HumanDuration>,
    pub h2_max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub listen: SocketAddr,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certificates: Spanned<Vec<RawCertificate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: Spanned<PathBuf>,
    pub key: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub pool: Spanned<String>,
    pub max_body: Option<ByteSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub balance: Option<RawBalance>,
    pub hash_key: Option<Spanned<String>>,
    pub max_concurrency: Option<Spanned<u32>>,
    pub queue: Option<RawQueue>,
    pub timeouts: Option<RawTimeouts>,
    pub upstream: Option<RawUpstream>,
    pub retries: Option<RawRetries>,
    pub max_idle_per_backend: Option<usize>,
    pub health: Option<RawHealth>,
    pub passive: Option<RawPassive>,
    pub slow_start: Option<HumanDuration>,
    pub fail_open: Option<bool>,
    pub autoscale: Option<RawAutoscale>,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutoscale {
    pub min: Option<Spanned<u32>>,
    pub max: Option<Spanned<u32>>,
    pub dry_run: Option<bool>,
    pub hook: Spanned<RawHook>,
    /// Initial estimate of the time a new backend takes to become ready.
    pub provisioning_delay: Option<HumanDuration>,
    /// Scale down only below the highest need of this window.
    pub scale_down_window: Option<HumanDuration>,
    /// Queue-wait SLO the policy sizes for.
    pub slo: Option<HumanDuration>,
    /// A provisioned member not healthy within this long is replaced.
    pub ready_deadline: Option<HumanDuration>,
    /// A draining member is removed after this long even with requests open.
    pub drain_timeout: Option<HumanDuration>,
    /// At most this many backends more / fewer per decision.
    pub max_step_up: Option<Spanned<u32>>,
    pub max_step_down: Option<Spanned<u32>>,
    /// No scale-up within this long of the last one; no scale-down within
    /// this long of the last change.
    pub cooldown_up: Option<HumanDuration>,
    pub cooldown_down: Option<HumanDuration>,
    /// Known peaks: `[[pools.X.autoscale.schedule]]`.
    #[serde(default)]
    pub schedule: Vec<RawScheduleEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScheduleEntry {
    pub start: Spanned<String>,
    pub end: Spanned<String>,
    pub min: u32,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawHook {
    Exec {
        command: Vec<String>,
        timeout: Option<HumanDuration>,
    },
    Webhook {
        url: String,
        timeout: Option<HumanDuration>,
    },
    Local {
        service_time: Option<HumanDuration>,
        concurrency: Option<usize>,
        timeout: Option<HumanDuration>,
    },
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawCheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub kind: Option<RawCheckKind>,
    pub path: Option<Spanned<String>>,
    pub interval: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub healthy: Option<Spanned<u32>>,
    pub unhealthy: Option<Spanned<u32>>,
    /// Accepted status range, e.g. "200-399".
    pub expect: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub consecutive_failures: Option<Spanned<u32>>,
    pub ejection: Option<HumanDuration>,
    pub max_ejection: Option<HumanDuration>,
    pub max_ejected_percent: Option<Spanned<u32>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    LeastConn,
    P2c,
    RoundRobin,
    PeakEwma,
    Hash,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawUpstream {
    Http1,
    H2c,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub max_depth: Option<usize>,
    pub timeout: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<HumanDuration>,
    pub response_header: Option<HumanDuration>,
    pub idle: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Other backends tried after a connect failure.
    pub connect: Option<u32>,
    /// Whether an idempotent request may be resent after the backend failed
    /// mid-exchange (off by default: the backend may have acted on it).
    pub idempotent: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub address: Spanned<SocketAddr>,
    pub weight: Option<Spanned<u32>>,
}
