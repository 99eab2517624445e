//! Every default the configuration falls back to, as one named constant each.
//!
//! Control path only: `validate.rs` reads these when a key is absent, and
//! `conf/tidegate.toml` documents the same values. Change a default here and
//! in that file together.

use std::time::Duration;

/// In-flight requests one backend may carry before new ones queue.
pub const MAX_CONCURRENCY: u32 = 64;
/// Waiters a pool's queue holds before it answers 503 at once.
pub const QUEUE_MAX_DEPTH: usize = 1024;
/// Longest a request waits in the queue for a free slot.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Share of `queue.max_depth` that sheddable requests may hold.
pub const QUEUE_SHEDDABLE_SHARE: f64 = 0.5;
/// Longest a sheddable request waits in the queue: a wait that long means
/// the queue is standing, not absorbing a burst (CoDel's interval).
pub const QUEUE_SHEDDABLE_TIMEOUT: Duration = Duration::from_millis(100);
/// TCP connect to a backend.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// From the request being sent to the backend's response head arriving.
pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// No byte from the backend for this long after its response head ends the
/// exchange (nginx `proxy_read_timeout`).
pub const UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// An idle pooled upstream connection is closed after this long.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections kept per backend.
pub const MAX_IDLE_PER_BACKEND: usize = 256;
/// Attempts on other backends after a connect failure (nothing was sent).
pub const CONNECT_RETRIES: u32 = 2;
/// Weight of a backend that does not name one.
pub const WEIGHT: u32 = 1;
/// Time constant of the latency EWMA used by `peak_ewma`.
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// Active health checks: time between two checks of one backend.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Active health checks: a check slower than this failed.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive passing checks that bring a down backend up.
pub const HEALTH_HEALTHY: u32 = 2;
/// Consecutive failing checks that take an up backend down.
pub const HEALTH_UNHEALTHY: u32 = 3;
/// Path an HTTP check requests.
pub const HEALTH_PATH: &str = "/healthz";
/// Statuses an HTTP check accepts.
pub const HEALTH_EXPECT: (u16, u16) = (200, 399);
/// Passive checks: consecutive connect failures or 5xx that eject a backend.
pub const PASSIVE_FAILURES: u32 = 5;
/// Passive checks: first ejection period (doubles with each ejection).
pub const PASSIVE_EJECTION: Duration = Duration::from_secs(10);
/// Passive checks: the longest an ejection lasts.
pub const PASSIVE_MAX_EJECTION: Duration = Duration::from_secs(300);
/// Passive checks: most of a pool that may be ejected at once.
pub const PASSIVE_MAX_EJECTED_PERCENT: u32 = 50;
/// Slow start: a backend that comes up ramps over this window (0 = off).
pub const SLOW_START: Duration = Duration::ZERO;

/// Time between DNS resolutions of `backends_from.dns`.
pub const DNS_INTERVAL: Duration = Duration::from_secs(5);

/// Autoscaling (and DNS members): probe interval for new members when the
/// pool sets no `health` table (short, so a new member takes traffic soon).
pub const AUTOSCALE_HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// Autoscaling: the time a new backend is assumed to take before its first
/// readiness is observed.
pub const PROVISIONING_DELAY: Duration = Duration::from_secs(30);
/// Autoscaling: scale down only below the highest need of this window.
pub const SCALE_DOWN_WINDOW: Duration = Duration::from_secs(90);
/// Autoscaling: a provisioned member not healthy this long after the hook
/// reported it is replaced.
pub const READY_DEADLINE: Duration = Duration::from_secs(300);
/// Autoscaling: a draining member is removed after this long even with
/// requests still open (a WebSocket would otherwise pin it forever).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Autoscaling: the queue-wait SLO the default policy sizes for.
pub const AUTOSCALE_SLO: Duration = Duration::from_millis(100);
/// Autoscaling: a hook call that takes longer failed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Autoscaling, `local` hook: service time of its backends.
pub const LOCAL_SERVICE_TIME: Duration = Duration::from_millis(20);
/// Autoscaling, `local` hook: requests each of its backends serves at once.
pub const LOCAL_CONCURRENCY: usize = 8;

/// An upload that makes no progress for this long is cut (408).
pub const CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// A response write to the client that makes no progress for this long
/// closes the connection (nginx `send_timeout`).
pub const CLIENT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// A WebSocket (or other upgraded) tunnel idle both ways for this long is
/// closed (HAProxy `timeout tunnel`).
pub const TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bytes a backend's response head may take (larger: 502).
pub const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;
/// Header fields a backend's response may carry (many `Set-Cookie`s are
/// normal; more: 502).
pub const MAX_RESPONSE_HEADERS: usize = 256;
/// Client must send a whole request head within this (slowloris guard).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a request head may take (hyper's read buffer; larger answers 431).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Header fields a request may carry (more answers 431).
pub const MAX_HEADERS: usize = 100;
/// Client connections open at once per listener; further accepts wait.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Protocols a route lets clients switch to with `Upgrade`.
pub const UPGRADE: [&str; 1] = ["websocket"];
/// Request body size per route (larger answers 413).
pub const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// TLS handshake must finish within this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams per client connection.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 256;

/// Micro-cache: bytes all cached responses may take (`[cache] max_bytes`).
pub const CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Micro-cache: how long a response without `max-age`/`s-maxage` is fresh.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// Micro-cache: how long past freshness a stale copy may still be served
/// while it is refreshed, or when the backend fails.
pub const CACHE_GRACE: Duration = Duration::from_secs(10);
/// Micro-cache: the largest body stored; larger ones stream through.
pub const CACHE_MAX_OBJECT: u64 = 1024 * 1024;
/// Micro-cache: how long a miss waits for the one request already fetching
/// its key before going upstream itself.
pub const CACHE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Rate limits: clients (keys) one `[[rate_limit]]` remembers at most; a
/// new client beyond it is admitted untracked until the sweep frees room.
pub const RATE_LIMIT_MAX_KEYS: usize = 1_000_000;
/// Rate limits: IPv6 clients are keyed by this many leading bits (a /64 is
/// what one subscriber usually gets, so a client cannot escape its limit
/// by hopping addresses inside it).
pub const RATE_LIMIT_IPV6_PREFIX: u8 = 64;

/// On SIGTERM/SIGINT, in-flight requests get this long to finish.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// On SIGTERM/SIGINT, `/readyz` fails and the listeners keep serving this
/// long before the drain starts (0 = drain at once).
pub const SHUTDOWN_DELAY: Duration = Duration::ZERO;
/// The `docker` provisioner: the Docker Engine's socket.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// The `docker` provisioner: the port backends listen on in their containers.
pub const DOCKER_PORT: u16 = 8080;
/// The `docker` provisioner: a call may pull nothing but starts containers,
/// which takes longer than an exec hook.
pub const DOCKER_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// The admin listener when `[admin]` is present without `listen`.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// `[cluster] etcd.prefix`: where the instances' keys live in etcd.
pub const CLUSTER_PREFIX: &str = "/tidegate";
/// `[cluster] etcd.lease`: an instance's lease TTL; a dead leader is
/// replaced within it (plus a second of polling).
pub const CLUSTER_LEASE: Duration = Duration::from_secs(5);
/// `[cluster] instance` when `/proc/sys/kernel/hostname` cannot be read.
pub const CLUSTER_INSTANCE: &str = "tidegate";
