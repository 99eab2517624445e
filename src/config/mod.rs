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
mod env;
mod file;
pub mod net;
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
/// through the snapshot built from it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (`<embedded demo>` for the demo).
    pub source: String,
    /// The file's identity when it was read, so the watcher reloads on any
    /// later change (even one made before the watcher started).
    pub loaded_from: Option<watch::Fingerprint>,
    /// `[runtime]`: threads, shutdown, state directory.
    pub runtime: Runtime,
    /// `[admin]`: the stats and control listener; `None` = no admin listener.
    pub admin: Option<Admin>,
    /// `[limits]`: what one client may cost.
    pub limits: Limits,
    /// `[[listener]]`: where clients connect.
    pub listeners: Vec<Listener>,
    /// `[[route]]`: host and path prefix to pool.
    pub routes: Vec<Route>,
    /// `[pools.NAME]`, by name.
    pub pools: BTreeMap<String, Arc<PoolConfig>>,
    /// `[access_log]`: one line per request; `None` = off.
    pub access_log: Option<AccessLogConfig>,
    /// `[[rate_limit]]`: per-client limits, in file order.
    pub rate_limits: Vec<RateLimitConfig>,
    /// `[cluster]`: coordination through etcd; `None` = this process
    /// decides alone (read at start; a reload does not change it).
    pub cluster: Option<ClusterConfig>,
    /// `[cache] max_bytes`: what all routes' cached responses may take.
    pub cache_max_bytes: u64,
}

/// A route's `cache = { ... }`: its GET and HEAD responses are kept and
/// served from memory, one upstream request per key at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Freshness of a response that names none (`s-maxage`, `max-age`).
    pub ttl: Duration,
    /// Past freshness, a stale copy is served while one request refreshes
    /// it, or when the backend fails.
    pub grace: Duration,
    /// The largest body stored; larger ones stream through uncached.
    pub max_object: u64,
    /// A miss waits at most this long for the request already fetching its
    /// key, then goes upstream itself.
    pub lock_timeout: Duration,
    /// Query parameter names left out of the key; a name ending in `*` is
    /// a prefix (`utm_*`).
    pub ignore_query: Vec<String>,
    /// Requests carrying a cookie of one of these names skip the cache.
    pub bypass_cookies: Vec<String>,
}

/// `[cluster]`: several instances, one decision (see `src/cluster/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This instance's name, unique in the cluster (default: host name).
    pub instance: String,
    /// etcd client URLs (`http://host:port`), tried in order.
    pub endpoints: Vec<http::Uri>,
    /// Key prefix, without a trailing `/`.
    pub prefix: String,
    /// The instance's lease TTL.
    pub lease: Duration,
}

/// `[[rate_limit]]`: at most `rate` requests per client (keyed by
/// [`HashKey`]), with bursts of up to `burst`, on the requests it matches.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Unique name: a reload keeps the counts of a rule that keeps it; the
    /// label of its metrics and the access log's `rate_limit` field.
    pub name: String,
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix; `None` matches any path.
    pub path_prefix: Option<String>,
    /// What identifies a client. A request without the header or cookie is
    /// keyed by its client address.
    pub key: HashKey,
    /// The sustained rate.
    pub rate: units::Rate,
    /// Requests a client may send at once after being idle.
    pub burst: u32,
    /// IPv6 clients are keyed by this many leading bits.
    pub ipv6_prefix: u8,
    /// Clients remembered at most.
    pub max_keys: usize,
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Line format.
    pub format: AccessLogFormat,
    /// A file (appended to, reopened on SIGUSR1); `None` = stderr.
    pub path: Option<PathBuf>,
}

/// `access_log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// Apache's and nginx's combined format, plus request id, duration
    /// and pool.
    Combined,
}

/// `[runtime]`.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Tokio worker threads; `None` = one per CPU.
    pub worker_threads: Option<usize>,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub shutdown_timeout: Duration,
    /// On SIGTERM/SIGINT, `/readyz` fails first while the listeners keep
    /// accepting and serving this long (so load balancers and Kubernetes
    /// endpoints stop sending), then the drain starts.
    pub shutdown_delay: Duration,
    /// Autoscaler history (per pool, per minute); `None` = kept in memory
    /// only, so the forecast starts empty after a restart.
    pub state_dir: Option<PathBuf>,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Address of the admin listener (loopback unless a token is set).
    pub listen: SocketAddr,
    /// Bearer token every admin route requires, when set.
    pub token: Option<String>,
    /// Host names a browser may reach the admin listener by, besides IP
    /// literals and `localhost` (DNS rebinding protection).
    pub allowed_hosts: Vec<String>,
}

/// `[limits]`: per-connection limits that protect the proxy from slow or
/// hostile clients.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Client connections open at once per listener; further accepts wait.
    pub max_connections: usize,
    /// A client must send a whole request head within this.
    pub header_read_timeout: Duration,
    /// Bytes a request head may take (larger: 431).
    pub max_header_bytes: usize,
    /// Header fields a request may carry (more: 431).
    pub max_headers: usize,
    /// A TLS handshake must finish within this.
    pub tls_handshake_timeout: Duration,
    /// Concurrent HTTP/2 streams per client connection.
    pub h2_max_concurrent_streams: u32,
    /// An upload that makes no progress for this long is cut (408).
    pub client_body_timeout: Duration,
    /// A response write that makes no progress for this long closes the
    /// client connection.
    pub client_send_timeout: Duration,
    /// An upgraded tunnel idle both ways for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Bytes a backend's response head may take.
    pub max_response_header_bytes: usize,
    /// Header fields a backend's response may carry.
    pub max_response_headers: usize,
    /// Peers whose `X-Forwarded-For` (and `X-Request-Id`) is believed and
    /// appended to; anyone else's is replaced.
    pub trusted_proxies: Vec<net::IpNet>,
}

/// `[[listener]]`: one port clients connect to.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Unique name; a reload reconciles listeners by it.
    pub name: String,
    /// Address to bind (port 0: any free port).
    pub listen: SocketAddr,
    /// TLS termination; `None` = plain TCP.
    pub tls: Option<Tls>,
    /// Every connection starts with a PROXY protocol header (v1 or v2)
    /// naming the real client.
    pub proxy_protocol: bool,
    /// Where `listen` is written: `file:line:col: listener[i].listen`, for
    /// errors found after validation (a port already taken).
    pub written_at: String,
}

impl Listener {
    /// The listener as an error names it: its place in the file and name.
    pub fn describe(&self) -> String {
        format!("{} (listener `{}`)", self.written_at, self.name)
    }
}

/// A listener's `tls` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// Certificates, chosen per handshake by SNI (the first is the default).
    pub certificates: Vec<CertificatePaths>,
}

/// One certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificatePaths {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// `[[route]]`: which pool serves a host and path prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix (the longest matching prefix wins).
    pub path_prefix: String,
    /// The pool's name.
    pub pool: String,
    /// Largest request body accepted (larger: 413).
    pub max_body: u64,
    /// Protocols (lower case) a client may switch to with `Upgrade`; any
    /// other upgrade request is served as an ordinary request.
    pub upgrade: Vec<String>,
    /// The route's class in its pool's queue.
    pub priority: Priority,
    /// The route's micro-cache; `None` = every request goes upstream.
    pub cache: Option<Arc<CacheConfig>>,
}

/// A route's class in its pool's queue: served by class, then by arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Served first; may take a full queue's last place from the newest
    /// sheddable (then normal) waiter (checkout, payment).
    Critical,
    /// The default.
    #[default]
    Normal,
    /// Served last, holds at most `queue.sheddable_share` of the queue and
    /// waits at most `queue.sheddable_timeout` (browse, recommendations).
    Sheddable,
}

impl Priority {
    /// Every class, in serving order.
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::Sheddable];

    /// Position in serving order (0 = first).
    #[inline]
    pub fn lane(self) -> usize {
        self as usize
    }

    /// The spelling in the config file, `/stats` and `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Sheddable => "sheddable",
        }
    }
}

/// A pool's balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Fewest in flight per unit of weight, ties at random.
    LeastConn,
    /// Power of two random choices.
    P2c,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Latency (peak EWMA) times load.
    PeakEwma,
    /// Consistent hashing on [`HashKey`] (cart affinity).
    Hash,
}

impl Balance {
    /// The spelling in the config file and `/stats`.
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
    /// The client's address.
    ClientIp,
    /// A request header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
}

/// How tidegate speaks to a pool's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    Http1,
    /// HTTP/2 with prior knowledge, one multiplexed connection per backend.
    H2c,
}

/// A pool's `upstream_tls` table: TLS from tidegate to its backends,
/// verified with rustls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name backend certificates are verified against (and sent as
    /// SNI); `None` = the backend's host name as configured, or its
    /// address.
    pub server_name: Option<String>,
    /// PEM file of the certificate authorities to trust; `None` = the
    /// system's (`SSL_CERT_FILE`, or the distribution's bundle).
    pub ca: Option<PathBuf>,
}

/// `[pools.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The pool's name (its key in `[pools]`).
    pub name: String,
    /// Balancing policy.
    pub balance: Balance,
    /// What `hash` hashes on.
    pub hash_key: HashKey,
    /// In-flight requests one backend may carry before new ones queue.
    pub max_concurrency: u32,
    /// Waiters the queue holds before it answers 503 at once.
    pub queue_max_depth: usize,
    /// Longest a request waits in the queue.
    pub queue_timeout: Duration,
    /// Most of `queue_max_depth` that sheddable requests may hold (0..=1).
    pub queue_sheddable_share: f64,
    /// Longest a sheddable request waits in the queue.
    pub queue_sheddable_timeout: Duration,
    /// TCP connect to a backend.
    pub connect_timeout: Duration,
    /// From sending a request to its response head.
    pub response_header_timeout: Duration,
    /// An idle pooled upstream connection is closed after this long.
    pub idle_timeout: Duration,
    /// No byte from the backend for this long after the head ends the
    /// exchange.
    pub read_timeout: Duration,
    /// Idle keep-alive connections kept per backend.
    pub max_idle_per_backend: usize,
    /// HTTP/1.1 or h2c to the backends.
    pub upstream: UpstreamProtocol,
    /// TLS to the backends; `None` = plain TCP.
    pub upstream_tls: Option<UpstreamTls>,
    /// Other backends tried after a connect failure (nothing was sent).
    pub connect_retries: u32,
    /// Whether a bodiless idempotent request may be resent after a backend
    /// failed mid-exchange.
    pub retry_idempotent: bool,
    /// Active checks; `None` = backends are presumed healthy.
    pub health: Option<HealthCheck>,
    /// Passive checks (ejection after consecutive failures).
    pub passive: PassiveHealth,
    /// Ramp window for a backend that comes up; zero = full share at once.
    pub slow_start: Duration,
    /// When every backend is down, send to them anyway instead of 503.
    pub fail_open: bool,
    /// The elastic pool; `None` = a fixed pool.
    pub autoscale: Option<AutoscaleConfig>,
    /// Members read from DNS besides the static ones; `None` = none.
    pub backends_from: Option<DnsMembers>,
    /// Static members.
    pub backends: Vec<BackendConfig>,
}

impl PoolConfig {
    /// Whether members come and go at run time (a provisioner or DNS),
    /// besides the static `backends`.
    pub fn has_dynamic_members(&self) -> bool {
        self.autoscale.is_some() || self.backends_from.is_some()
    }
}

/// A pool's `backends_from = { dns = ... }`: members re-resolved from DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsMembers {
    /// The name to resolve, without a port.
    pub name: String,
    /// What to ask for.
    pub lookup: DnsLookup,
    /// Time between resolutions.
    pub interval: Duration,
    /// The name server to ask; `None` = the system's (`/etc/resolv.conf`).
    pub nameserver: Option<SocketAddr>,
}

/// The records a [`DnsMembers`] name is resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsLookup {
    /// A and AAAA records, each address with this port.
    Address {
        /// The port every address serves on.
        port: u16,
    },
    /// SRV records (`_service._proto.name`): each target with its own port.
    Srv,
}

/// A pool's `autoscale` table: the elastic pool.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleConfig {
    /// Fewest backends (static members included).
    pub min: u32,
    /// Most backends (static members included).
    pub max: u32,
    /// Decide and show, never call the hook.
    pub dry_run: bool,
    /// Who acts on the decisions: the provisioning hook, or something
    /// outside that reads the exported demand.
    pub mode: AutoscaleMode,
    /// The provisioning delay assumed until one is observed.
    pub provisioning_delay: Duration,
    /// Scale down only below the highest need of this window.
    pub scale_down_window: Duration,
    /// The queue-wait bound the policy sizes for.
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

/// `autoscale.mode`: who acts on the pool's decisions.
#[derive(Debug, Clone, PartialEq)]
pub enum AutoscaleMode {
    /// tidegate calls the provisioner and applies the members it answers.
    Hook(HookConfig),
    /// tidegate decides and exports (`GET /demand`, `tidegate_pool_demand`,
    /// `tidegate_pool_desired_backends`) but never calls a hook: KEDA or an
    /// HPA scales the backends, and membership comes from the config.
    Export,
}

impl AutoscaleConfig {
    /// The provisioner, in `hook` mode.
    pub fn hook(&self) -> Option<&HookConfig> {
        match &self.mode {
            AutoscaleMode::Hook(h) => Some(h),
            AutoscaleMode::Export => None,
        }
    }

    /// Whether decisions are carried out (a hook, and not a dry run).
    pub fn acts(&self) -> bool {
        !self.dry_run && self.hook().is_some()
    }

    /// The mode as the config file and `/stats` spell it.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            AutoscaleMode::Hook(_) => "hook",
            AutoscaleMode::Export => "export",
        }
    }
}

/// The operator's limits on how the wanted size may move; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Guards {
    /// At most this many backends more per decision.
    pub max_step_up: Option<u32>,
    /// At most this many backends fewer per decision.
    pub max_step_down: Option<u32>,
    /// Seconds after a scale-up before the next one.
    pub cooldown_up: u64,
    /// Seconds after any change before a scale-down.
    pub cooldown_down: u64,
}

/// A pool's provisioner (`hook = { kind = ... }`).
#[derive(Debug, Clone, PartialEq)]
pub enum HookConfig {
    /// A command: the request on stdin, the answer on stdout.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
        /// A call that takes longer failed (the process group is killed).
        timeout: Duration,
        /// Environment variables the command gets besides
        /// `PATH`, `HOME`, `LANG`, `LC_ALL`, `TZ`, `TMPDIR` and `USER`.
        env: Vec<String>,
    },
    /// An HTTP POST of the request; the answer is the response body.
    Webhook {
        /// Where to POST (`http://` or `https://`).
        url: http::Uri,
        /// A call that takes longer failed.
        timeout: Duration,
        /// The CAs an `https://` URL is verified with; `None` = the system's.
        ca: Option<PathBuf>,
    },
    /// Built in: `tidegate backend` children on loopback (the demo's).
    Local {
        /// Service time of each child backend.
        service_time: Duration,
        /// Requests each child serves at once.
        concurrency: usize,
        /// A call that takes longer failed.
        timeout: Duration,
    },
    /// Built in: containers started and removed through the Docker Engine
    /// API on its Unix socket.
    Docker {
        /// The image each backend container runs.
        image: String,
        /// The network the containers join; members are their addresses on it.
        network: String,
        /// The port the backends listen on inside their containers.
        port: u16,
        /// Labels put on every container (and used, with the pool's, to
        /// find them again after a restart).
        labels: BTreeMap<String, String>,
        /// The Docker Engine's Unix socket.
        socket: PathBuf,
        /// The container's command; empty = the image's.
        command: Vec<String>,
        /// A call that takes longer failed.
        timeout: Duration,
    },
}

/// What an active check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// An HTTP GET of `path`, expecting a status in `expect`.
    Http,
    /// A TCP connect.
    Tcp,
}

/// A pool's `health` table: active checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// HTTP or TCP.
    pub kind: CheckKind,
    /// Path an HTTP check requests.
    pub path: String,
    /// Time between two checks of one backend.
    pub interval: Duration,
    /// A check slower than this failed.
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend up.
    pub healthy: u32,
    /// Consecutive failures that take an up backend down.
    pub unhealthy: u32,
    /// Accepted status range, inclusive.
    pub expect: (u16, u16),
}

/// A pool's `passive` table: ejection after failures seen on real traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Consecutive failures that eject a backend.
    pub consecutive_failures: u32,
    /// First ejection period (doubles with each ejection).
    pub ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
    /// Most of a pool that may be ejected at once, in percent.
    pub max_ejected_percent: u32,
}

/// One static member of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The backend's address.
    pub address: SocketAddr,
    /// The host name it was given by, when it was a name (the TLS server
    /// name when `upstream_tls` names none).
    pub host: Option<String>,
    /// Relative share of traffic.
    pub weight: u32,
}

/// Why a config was refused. Displays as `file:line:col: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {message}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The file was read and something in it is wrong.
    #[error("{path}:{line}:{col}: {key}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column (in characters).
        col: usize,
        /// The dotted key, such as `pools.shop.max_concurrency`.
        key: String,
        /// What was expected.
        message: String,
    },
    /// Several errors, each on its own line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

impl Config {
    /// The effective config, every default filled in and `${VAR}`s
    /// replaced, with the admin token masked (`tidegate check --dump`).
    pub fn dump(&self) -> String {
        let mut shown = self.clone();
        if let Some(a) = &mut shown.admin {
            if a.token.is_some() {
                a.token = Some("********".into());
            }
        }
        format!("{shown:#?}")
    }

    /// The certificate and key files the listeners name (watched with the
    /// config file: a renewed certificate reloads like an edit).
    pub fn certificate_files(&self) -> Vec<PathBuf> {
        self.listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| &t.certificates)
            .flat_map(|c| [c.cert.clone(), c.key.clone()])
            .collect()
    }

    /// Reads, parses and validates a file. Relative certificate paths are
    /// resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        // Taken before reading: a change racing the read reloads once more
        // rather than not at all.
        let fingerprint = watch::fingerprint(path);
        // A FIFO or a device would block the read until someone writes:
        // only a regular file (through symlinks) is read.
        let read = std::fs::metadata(path).and_then(|meta| {
            if meta.is_file() {
                std::fs::read_to_string(path)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file (a FIFO, socket or device is never read)",
                ))
            }
        });
        let text = read.map_err(|e| ConfigError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = validate::parse(&text, &shown, base, &resolve)?;
        config.loaded_from = fingerprint;
        Ok(config)
    }

    /// Parses and validates text; `source` names it in errors. Backend host
    /// names are resolved with the system resolver.
    pub fn parse(text: &str, source: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        validate::parse(text, source, base_dir, &resolve)
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

/// A backend's `host:port`: a literal socket address, or a host name
/// resolved with the system resolver (the first address; IPv4 first).
fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "`{text}` is not an address such as 10.0.0.5:8080 or shop-1.internal:8080"
        ));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "`{text}` is not an address such as 10.0.0.5:8080 or shop-1.internal:8080"
        ));
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = (host, port.parse::<u16>().unwrap_or(0))
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("`{host}` resolves to no address"))
}

impl fmt::Display for HashKey {
    /// As the config file spells it: `client_ip`, `header:NAME`, `cookie:NAME`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
