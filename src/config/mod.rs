//! Configuration: the one TOML file an operator edits, read in two stages.
//!
//! Control path only. `file.rs` is the strict serde mirror of the file;
//! `validate.rs` turns it into [`Config`], the type the rest of the program
//! uses, filling defaults from `defaults.rs`. Nothing is bound or spawned
//! until a whole file has validated, so a bad file changes nothing: at start
//! it exits non-zero, on reload the previous config keeps serving.
//!
//! Every error names the file, line, column and key ([`ConfigError`]).

pub mod defaults;
mod file;
pub mod schedule;
pub mod units;
mod validate;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The demo configuration, embedded so `tidegate` with no arguments runs.
pub const DEMO_TOML: &str = include_str!("../../conf/demo.toml");

/// A validated configuration. Cheap to share: the hot path sees it only
/// through the [`crate::state::Snapshot`] built from it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (`<embedded demo>` for the demo).
    pub source: String,
    /// The file's identity when it was read, so the watcher reloads on any
    /// later change (even one made before the watcher started).
    pub loaded_from: Option<watch::Fingerprint>,
    pub runtime: Runtime,
    pub admin: Option<Admin>,
    pub limits: Limits,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub pools: BTreeMap<String, Arc<PoolConfig>>,
}

#[derive(Debug, Clone)]
pub struct Runtime {
    /// Tokio worker threads; `None` = one per CPU.
    pub worker_threads: Option<usize>,
    pub shutdown_timeout: Duration,
    /// Autoscaler history (per pool, per minute); `None` = kept in memory
    /// only, so the forecast starts empty after a restart.
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    pub token: Option<String>,
}

/// Per-connection limits that protect the proxy from slow or hostile clients.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub tls_handshake_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub certificates: Vec<CertificatePaths>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertificatePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub pool: String,
    pub max_body: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    LeastConn,
    P2c,
    RoundRobin,
    PeakEwma,
    Hash,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::LeastConn => "least_conn",
            Balance::P2c => "p2c",
            Balance::RoundRobin => "round_robin",
            Balance::PeakEwma => "peak_ewma",
            Balance::Hash => "hash",
        }
    }
}

/// What `balance = "hash"` hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    H2c,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub balance: Balance,
    pub hash_key: HashKey,
    pub max_concurrency: u32,
    pub queue_max_depth: usize,
    pub queue_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_backend: usize,
    pub upstream: UpstreamProtocol,
    pub connect_retries: u32,
    pub retry_idempotent: bool,
    /// Active checks; `None` = backends are presumed healthy.
    pub health: Option<HealthCheck>,
    pub passive: PassiveHealth,
    /// Ramp window for a backend that comes up; zero = full share at once.
    pub slow_start: Duration,
    /// When every backend is down, send to them anyway instead of 503.
    pub fail_open: bool,
    /// The elastic pool; `None` = a fixed pool.
    pub autoscale: Option<AutoscaleConfig>,
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleConfig {
    pub min: u32,
    pub max: u32,
    pub dry_run: bool,
    pub hook: HookConfig,
    pub provisioning_delay: Duration,
    pub scale_down_window: Duration,
    pub slo: Duration,
    /// A provisioned member that is not healthy this long after the hook
    /// reported it is reported and replaced.
    pub ready_deadline: Duration,
    /// A draining member is removed after this long even if requests (a
    /// long WebSocket, say) are still open on it.
    pub drain_timeout: Duration,
    /// Step limits and cooldowns on the wanted size.
    pub guards: Guards,
    /// Scheduled capacity (a floor while an entry is in force).
    pub schedule: Vec<schedule::Entry>,
}

/// The operator's limits on how the wanted size may move; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Guards {
    pub max_step_up: Option<u32>,
    pub max_step_down: Option<u32>,
    pub cooldown_up: u64,
    pub cooldown_down: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HookConfig {
    Exec {
        command: Vec<String>,
        timeout: Duration,
    },
    Webhook {
        url: http::Uri,
        timeout: Duration,
    },
    Local {
        service_time: Duration,
        concurrency: usize,
        timeout: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
    pub expect: (u16, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    pub consecutive_failures: u32,
    pub ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: SocketAddr,
    pub weight: u32,
}

/// Why a config was refused. Displays as `file:line:col: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {message}")]
    Read { path: String, message: String },
    #[error("{path}:{line}:{col}: {key}: {message}")]
    Invalid {
        path: String,
        line: usize,
        col: usize,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates a file. Relative certificate paths are
    /// resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        // Taken before reading: a change racing the read reloads once more
        // rather than not at all.
        let fingerprint = watch::fingerprint(path);
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::parse(&text, &shown, base)?;
        config.loaded_from = fingerprint;
        Ok(config)
    }

    /// Parses and validates text; `source` names it in errors.
    pub fn parse(text: &str, source: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        validate::parse(text, source, base_dir)
    }

    /// The embedded demo config.
    pub fn demo() -> Config {
        Config::parse(DEMO_TOML, "<embedded conf/demo.toml>", Path::new("conf"))
            .expect("the embedded demo config is validated by a unit test")
    }

    /// A one-line summary for `tidegate check`.
    pub fn summary(&self) -> String {
        let backends: usize = self.pools.values().map(|p| p.backends.len()).sum();
        format!(
            "{}: ok: {} listener(s), {} route(s), {} pool(s), {} backend(s)",
            self.source,
            self.listeners.len(),
            self.routes.len(),
            self.pools.len(),
            backends
        )
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
