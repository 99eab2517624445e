//! Raw file -> [`Config`]: defaults, cross-references and range checks.
//!
//! Control path only. Pure but for the one thing a config cannot be checked
//! without: resolving backend host names, through the resolver the caller
//! passes in. (Certificate files are read later, by the TLS layer, before
//! anything is bound.) Errors carry the byte span of the offending value,
//! turned into line and column here; validation goes on after an error, so
//! one run reports every mistake in the file, not only the first. Every
//! number and duration has a documented range (`conf/tidegate.toml`), so a
//! value that would misbehave at run time is refused here.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::defaults as d;
use super::file::{
    Dur, RawAutoscale, RawAutoscaleMode, RawBackendsFrom, RawBalance, RawCheckKind, RawConfig, RawHealth, RawHook,
    RawPassive, RawPool, RawPriority, RawUpstream, Size,
};
use super::net::IpNet;
use super::{
    AccessLogConfig, AccessLogFormat, Admin, AutoscaleConfig, AutoscaleMode, BackendConfig, Balance, CacheConfig,
    CertificatePaths, CheckKind, ClusterConfig, Config, ConfigError, DnsMembers, Guards, HashKey, HealthCheck,
    HookConfig, Limits, Listener, PassiveHealth, PoolConfig, Priority, RateLimitConfig, Route, Runtime, Tls,
    UpstreamProtocol, UpstreamTls,
};

/// Hyper refuses read buffers smaller than this.
const MIN_HEADER_BYTES: u64 = 8192;

/// Resolves a backend's `host:port` (a literal address or a host name).
pub(crate) type Resolve<'a> = &'a dyn Fn(&str) -> Result<SocketAddr, String>;

struct Ctx<'a> {
    text: &'a str,
    source: &'a str,
    resolve: Resolve<'a>,
    errors: RefCell<Vec<ConfigError>>,
}

impl Ctx<'_> {
    fn error(&self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let (line, col) = position(self.text, span.start);
        ConfigError::Invalid {
            path: self.source.to_string(),
            line,
            col,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Records an error and lets validation go on.
    fn report(&self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let e = self.error(span, key, message);
        self.errors.borrow_mut().push(e);
    }

    /// A number in `min..=max`, or `default` when absent.
    fn number<T>(&self, v: Option<Spanned<u64>>, key: &str, default: T, min: u64, max: u64) -> T
    where
        T: TryFrom<u64> + Copy,
    {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if n < min || n > max {
            self.report(v.span(), key, format!("must be between {min} and {max}, found {n}"));
            return default;
        }
        T::try_from(n).unwrap_or(default)
    }

    /// A duration in `min..=max`, or `default` when absent.
    fn duration(&self, v: Option<Dur>, key: &str, default: Duration, min: Duration, max: Duration) -> Duration {
        let Some(v) = v else { return default };
        let d = v.get_ref().0;
        if d < min || d > max {
            self.report(
                v.span(),
                key,
                format!("must be between {} and {}, found {}", show(min), show(max), show(d)),
            );
            return default;
        }
        d
    }

    /// A byte size in `min..=max`, or `default` when absent.
    fn size(&self, v: Option<Size>, key: &str, default: u64, min: u64, max: u64) -> u64 {
        let Some(v) = v else { return default };
        let n = v.get_ref().0;
        if n < min || n > max {
            self.report(
                v.span(),
                key,
                format!("must be between {min} and {max} bytes, found {n}"),
            );
            return default;
        }
        n
    }

    /// A socket address, `ip:port` or `host:port`.
    fn address(&self, v: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match (self.resolve)(v.get_ref()) {
            Ok(a) => Some(a),
            Err(message) => {
                self.report(v.span(), key, message);
                None
            }
        }
    }
}

/// A duration as the config file would write it.
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const MIB: u64 = 1024 * 1024;

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Best-effort dotted key for a parse error at `offset`: the enclosing
/// `[table]` header plus the keys assigned on that line up to the offset.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let mut table = String::new();
    for line in text[..line_start].lines().rev() {
        let t = line.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            break;
        }
    }
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        return trimmed.trim_matches(|c| c == '[' || c == ']').trim().to_string();
    }
    // Keys assigned on this line up to the offset, minus siblings already
    // closed by `,` or `}` (inline tables nest several on one line).
    let upto = &text[line_start..offset.max(line_start)];
    let upto = if upto.contains('=') { upto } else { line };
    let mut keys: Vec<(usize, &str)> = Vec::new();
    let (mut depth, mut in_string, mut token_start) = (0usize, false, 0usize);
    for (i, c) in upto.char_indices() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '{' | '[' => {
                depth += 1;
                token_start = i + 1;
            }
            '}' | ']' => {
                keys.retain(|(d, _)| *d < depth);
                depth = depth.saturating_sub(1);
                token_start = i + 1;
            }
            ',' => {
                keys.retain(|(d, _)| *d < depth);
                token_start = i + 1;
            }
            '=' => {
                let key = upto[token_start..i].trim().trim_matches('"');
                if !key.is_empty() {
                    keys.push((depth, key));
                }
                token_start = i + 1;
            }
            _ => {}
        }
    }
    let keys = keys.into_iter().map(|(_, k)| k);
    let mut parts: Vec<&str> = Vec::new();
    if !table.is_empty() {
        parts.push(&table);
    }
    parts.extend(keys);
    if parts.is_empty() {
        "(top level)".to_string()
    } else {
        parts.join(".")
    }
}

pub(super) fn parse(text: &str, source: &str, base_dir: &Path, resolve: Resolve<'_>) -> Result<Config, ConfigError> {
    let substituted = super::env::substitute(text, |name| std::env::var(name).ok()).map_err(|unset| {
        let errors: Vec<ConfigError> = unset
            .iter()
            .map(|u| {
                let (line, col) = position(text, u.offset);
                ConfigError::Invalid {
                    path: source.to_string(),
                    line,
                    col,
                    key: key_at(text, u.offset),
                    message: format!("environment variable `{}` is not set", u.name),
                }
            })
            .collect();
        match <[ConfigError; 1]>::try_from(errors) {
            Ok([one]) => one,
            Err(several) => ConfigError::Several(several),
        }
    })?;
    let text = substituted.as_str();
    let cx = Ctx {
        text,
        source,
        resolve,
        errors: RefCell::new(Vec::new()),
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        cx.error(span.clone(), key_at(text, span.start), e.message().trim().to_string())
    })?;
    let config = validate(&cx, raw, base_dir);
    let mut errors = cx.errors.into_inner();
    errors.sort_by_key(|e| match e {
        ConfigError::Invalid { line, col, .. } => (*line, *col),
        _ => (0, 0),
    });
    match (config, errors.len()) {
        (Some(config), 0) => Ok(config),
        (_, 0) => Err(ConfigError::Several(Vec::new())),
        (_, 1) => Err(errors.remove(0)),
        (_, _) => Err(ConfigError::Several(errors)),
    }
}

/// Everything but the parse: `None` (with errors reported) when something
/// the rest depends on is missing.
fn validate(cx: &Ctx<'_>, mut raw: RawConfig, base_dir: &Path) -> Option<Config> {
    let runtime = Runtime {
        worker_threads: raw
            .runtime
            .worker_threads
            .map(|w| cx.number(Some(w), "runtime.worker_threads", 1, 1, 1024)),
        shutdown_timeout: cx.duration(
            raw.runtime.shutdown_timeout,
            "runtime.shutdown_timeout",
            d::SHUTDOWN_TIMEOUT,
            Duration::ZERO,
            HOUR,
        ),
        shutdown_delay: cx.duration(
            raw.runtime.shutdown_delay,
            "runtime.shutdown_delay",
            d::SHUTDOWN_DELAY,
            Duration::ZERO,
            HOUR,
        ),
        state_dir: raw.runtime.state_dir.map(|dir| base_dir.join(dir)),
    };
    let admin = raw.admin.and_then(|a| validate_admin(cx, a));
    let rate_limit_max_keys = raw.limits.rate_limit_max_keys.take();
    let limits = validate_limits(cx, raw.limits);
    let access_log = raw.access_log.map(|a| validate_access_log(cx, a, base_dir));

    if raw.listeners.is_empty() {
        cx.report(0..0, "listener", "at least one [[listener]] is required");
    }
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, rl) in raw.listeners.into_iter().enumerate() {
        let key = format!("listener[{i}]");
        if !names.insert(rl.name.get_ref().clone()) {
            cx.report(
                rl.name.span(),
                format!("{key}.name"),
                format!("duplicate listener name `{}`", rl.name.get_ref()),
            );
        }
        let Ok(listen) = rl.listen.get_ref().parse::<SocketAddr>() else {
            cx.report(
                rl.listen.span(),
                format!("{key}.listen"),
                format!("`{}` is not an address such as 0.0.0.0:8080", rl.listen.get_ref()),
            );
            continue;
        };
        // Port 0 asks the OS for a free port: several such listeners never clash.
        if listen.port() != 0 && !addrs.insert(listen) {
            cx.report(
                rl.listen.span(),
                format!("{key}.listen"),
                format!("{listen} is already used by another listener"),
            );
        }
        let tls = rl.tls.and_then(|t| {
            if t.certificates.get_ref().is_empty() {
                cx.report(
                    t.certificates.span(),
                    format!("{key}.tls.certificates"),
                    "needs at least one { cert, key } pair",
                );
                return None;
            }
            let certificates = t
                .certificates
                .into_inner()
                .into_iter()
                .enumerate()
                .map(|(j, c)| {
                    let paths = CertificatePaths {
                        cert: base_dir.join(c.cert.get_ref()),
                        key: base_dir.join(c.key.get_ref()),
                    };
                    check_pem(
                        cx,
                        &c.cert,
                        &paths.cert,
                        &format!("{key}.tls.certificates[{j}].cert"),
                        true,
                    );
                    check_pem(
                        cx,
                        &c.key,
                        &paths.key,
                        &format!("{key}.tls.certificates[{j}].key"),
                        false,
                    );
                    paths
                })
                .collect();
            Some(Tls { certificates })
        });
        let (line, col) = position(cx.text, rl.listen.span().start);
        listeners.push(Listener {
            name: rl.name.into_inner(),
            listen,
            tls,
            proxy_protocol: rl.proxy_protocol.unwrap_or(false),
            written_at: format!("{}:{line}:{col}: {key}.listen", cx.source),
        });
    }

    let mut pools = BTreeMap::new();
    for (name, rp) in raw.pools {
        let span = rp.span();
        if let Some(pool) = validate_pool(cx, &name, rp.into_inner(), span, base_dir) {
            pools.insert(name, Arc::new(pool));
        }
    }

    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, rr) in raw.routes.into_iter().enumerate() {
        let key = format!("route[{i}]");
        if !pools.contains_key(rr.pool.get_ref()) {
            let known: Vec<&str> = pools.keys().map(String::as_str).collect();
            cx.report(
                rr.pool.span(),
                format!("{key}.pool"),
                format!("no pool named `{}` (defined: {})", rr.pool.get_ref(), known.join(", ")),
            );
        }
        let path_prefix = rr
            .path_prefix
            .and_then(|p| path_prefix(cx, p, &format!("{key}.path_prefix")))
            .unwrap_or_else(|| "/".to_string());
        let host = rr.host.and_then(|h| host_name(cx, h, &format!("{key}.host")));
        let upgrade = match rr.upgrade {
            None => default_upgrade(),
            Some(list) => validate_upgrade(cx, &key, list),
        };
        routes.push(Route {
            host,
            path_prefix,
            pool: rr.pool.into_inner(),
            max_body: cx.size(rr.max_body, &format!("{key}.max_body"), d::MAX_BODY_BYTES, 0, 1 << 40),
            upgrade,
            priority: match rr.priority {
                Some(RawPriority::Critical) => Priority::Critical,
                Some(RawPriority::Normal) | None => Priority::Normal,
                Some(RawPriority::Sheddable) => Priority::Sheddable,
            },
            cache: rr.cache.map(|c| Arc::new(validate_route_cache(cx, &key, c))),
        });
    }
    if routes.is_empty() {
        // One pool and no routes: everything goes to it.
        match pools.keys().next() {
            Some(only) if pools.len() == 1 => routes.push(Route {
                host: None,
                path_prefix: "/".into(),
                pool: only.clone(),
                max_body: d::MAX_BODY_BYTES,
                upgrade: default_upgrade(),
                priority: Priority::Normal,
                cache: None,
            }),
            _ if cx.errors.borrow().is_empty() => cx.report(
                0..0,
                "route",
                "at least one [[route]] is required when there is not exactly one pool",
            ),
            _ => {}
        }
    }
    let rate_limits = validate_rate_limits(cx, raw.rate_limits, rate_limit_max_keys);
    let cache_max_bytes = cx.size(
        raw.cache.and_then(|c| c.max_bytes),
        "cache.max_bytes",
        d::CACHE_MAX_BYTES,
        1024,
        1 << 40,
    );
    let cluster = raw.cluster.map(|c| validate_cluster(cx, c));
    if !cx.errors.borrow().is_empty() {
        return None;
    }
    Some(Config {
        source: cx.source.to_string(),
        loaded_from: None,
        runtime,
        admin,
        limits,
        listeners,
        routes,
        pools,
        access_log,
        rate_limits,
        cache_max_bytes,
        cluster,
    })
}

/// A route's `cache = { ... }`: durations and sizes in range, names that
/// can appear in a query or a cookie.
fn validate_route_cache(cx: &Ctx<'_>, route: &str, c: super::file::RawRouteCache) -> CacheConfig {
    let k = |sub: &str| format!("{route}.cache.{sub}");
    let names = |list: Option<Spanned<Vec<String>>>, key: &str| -> Vec<String> {
        let Some(list) = list else { return Vec::new() };
        let span = list.span();
        let mut out = Vec::new();
        for n in list.into_inner() {
            let stem = n.strip_suffix('*').unwrap_or(&n);
            if stem.is_empty() || stem.bytes().any(|b| b.is_ascii_whitespace() || b"=&;,*".contains(&b)) {
                cx.report(
                    span.clone(),
                    key,
                    format!("`{n}` is not a name (a `*` may only end it)"),
                );
            } else {
                out.push(n);
            }
        }
        out
    };
    CacheConfig {
        ttl: cx.duration(c.ttl, &k("ttl"), d::CACHE_TTL, Duration::from_millis(1), DAY),
        grace: cx.duration(c.grace, &k("grace"), d::CACHE_GRACE, Duration::ZERO, DAY),
        max_object: cx.size(c.max_object, &k("max_object"), d::CACHE_MAX_OBJECT, 0, 1 << 30),
        lock_timeout: cx.duration(
            c.lock_timeout,
            &k("lock_timeout"),
            d::CACHE_LOCK_TIMEOUT,
            Duration::ZERO,
            Duration::from_secs(300),
        ),
        ignore_query: names(c.ignore_query, &k("ignore_query")),
        bypass_cookies: names(c.bypass_cookies, &k("bypass_cookies")),
    }
}

/// A route's or rule's `host`: lower-cased, without port, path or userinfo.
fn host_name(cx: &Ctx<'_>, h: Spanned<String>, key: &str) -> Option<String> {
    if h.get_ref().is_empty() || h.get_ref().contains(['/', ' ', '@', ':']) {
        cx.report(
            h.span(),
            key,
            "expected a host name such as `shop.example` (no port, path or userinfo)",
        );
        return None;
    }
    Some(h.into_inner().to_ascii_lowercase())
}

/// A route's or rule's `path_prefix`: starts with `/`.
fn path_prefix(cx: &Ctx<'_>, p: Spanned<String>, key: &str) -> Option<String> {
    if !p.get_ref().starts_with('/') {
        cx.report(p.span(), key, "must start with `/`");
        return None;
    }
    Some(p.into_inner())
}

/// `[[rate_limit]]` rules: unique names, a key, a rate, and bounds.
fn validate_rate_limits(
    cx: &Ctx<'_>,
    raw: Vec<super::file::RawRateLimit>,
    default_max_keys: Option<Spanned<u64>>,
) -> Vec<RateLimitConfig> {
    let default_max_keys = cx.number(
        default_max_keys,
        "limits.rate_limit_max_keys",
        d::RATE_LIMIT_MAX_KEYS,
        1,
        100_000_000,
    );
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("rate_limit[{i}]");
        let k = |sub: &str| format!("{key}.{sub}");
        let name = r.name.get_ref();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            cx.report(
                r.name.span(),
                k("name"),
                format!("`{name}`: expected letters, digits, `-`, `_` or `.` (it labels metrics)"),
            );
        } else if !names.insert(name.clone()) {
            cx.report(r.name.span(), k("name"), format!("duplicate rate_limit name `{name}`"));
        }
        let (host, prefix) = match r.matches {
            Some(m) => (
                m.host.and_then(|h| host_name(cx, h, &k("match.host"))),
                m.path_prefix.and_then(|p| path_prefix(cx, p, &k("match.path_prefix"))),
            ),
            None => (None, None),
        };
        let client_key = match r.key {
            None => HashKey::ClientIp,
            Some(v) => parse_hash_key(v.get_ref()).unwrap_or_else(|m| {
                cx.report(v.span(), k("key"), m);
                HashKey::ClientIp
            }),
        };
        let rate = *r.rate.get_ref();
        if rate.count > 1_000_000 {
            cx.report(
                r.rate.span(),
                k("rate"),
                format!("at most 1000000 requests per period, found {}", rate.count),
            );
        }
        // Default burst: one period's worth, so "20/s" admits 20 at once.
        let default_burst = u32::try_from(rate.count).unwrap_or(u32::MAX);
        rules.push(RateLimitConfig {
            name: r.name.into_inner(),
            host,
            path_prefix: prefix,
            key: client_key,
            rate,
            burst: cx.number(r.burst, &k("burst"), default_burst, 1, 1_000_000),
            ipv6_prefix: cx.number(r.ipv6_prefix, &k("ipv6_prefix"), d::RATE_LIMIT_IPV6_PREFIX, 1, 128),
            max_keys: cx.number(r.max_keys, &k("max_keys"), default_max_keys, 1, 100_000_000),
        });
    }
    rules
}

fn default_upgrade() -> Vec<String> {
    d::UPGRADE.iter().map(|s| s.to_string()).collect()
}

fn validate_upgrade(cx: &Ctx<'_>, key: &str, list: Spanned<Vec<String>>) -> Vec<String> {
    let span = list.span();
    let mut tokens = Vec::new();
    for t in list.into_inner() {
        let t = t.trim().to_ascii_lowercase();
        if t == "h2c" {
            cx.report(
                span.clone(),
                format!("{key}.upgrade"),
                "`h2c` is never tunnelled (RFC 9113 removed the HTTP/2 upgrade); HTTP/2 clients use prior knowledge or ALPN",
            );
        } else if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b)) {
            cx.report(
                span.clone(),
                format!("{key}.upgrade"),
                format!("`{t}` is not a protocol name"),
            );
        } else {
            tokens.push(t);
        }
    }
    tokens
}

fn validate_admin(cx: &Ctx<'_>, a: super::file::RawAdmin) -> Option<Admin> {
    let (listen, span) = match &a.listen {
        Some(l) => match l.get_ref().parse::<SocketAddr>() {
            Ok(addr) => (addr, l.span()),
            Err(_) => {
                cx.report(
                    l.span(),
                    "admin.listen",
                    format!("`{}` is not an address such as 127.0.0.1:9090", l.get_ref()),
                );
                return None;
            }
        },
        None => (d::ADMIN_LISTEN.parse().expect("valid default"), 0..0),
    };
    let token_given = a.token.is_some();
    let token = match a.token {
        Some(t) if t.get_ref().trim().is_empty() => {
            cx.report(
                t.span(),
                "admin.token",
                "an empty token protects nothing; remove the key or set a secret",
            );
            None
        }
        Some(t) => Some(t.into_inner()),
        None => None,
    };
    if !listen.ip().is_loopback() && !token_given {
        cx.report(
            span,
            "admin.listen",
            "a non-loopback admin listener needs `admin.token` (a bearer token)",
        );
    }
    let allowed_hosts = a.allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
    Some(Admin {
        listen,
        token,
        allowed_hosts,
    })
}

fn validate_cluster(cx: &Ctx<'_>, c: super::file::RawCluster) -> ClusterConfig {
    let instance = match c.instance {
        Some(i) => {
            let name = i.get_ref().trim().to_string();
            if name.is_empty() || name.contains('/') || name.len() > 128 {
                cx.report(
                    i.span(),
                    "cluster.instance",
                    "expected a non-empty name without `/` (at most 128 bytes)",
                );
            }
            name
        }
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .unwrap_or_else(|| d::CLUSTER_INSTANCE.to_string()),
    };
    let span = c.etcd.endpoints.span();
    let mut endpoints = Vec::new();
    for e in c.etcd.endpoints.get_ref() {
        match e.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => endpoints.push(u),
            Ok(u) if u.scheme_str() == Some("https") => cx.report(
                span.clone(),
                "cluster.etcd.endpoints",
                format!("`{e}`: https is not supported yet; reach etcd over http on a trusted network"),
            ),
            _ => cx.report(
                span.clone(),
                "cluster.etcd.endpoints",
                format!("`{e}`: expected http://host:port"),
            ),
        }
    }
    if c.etcd.endpoints.get_ref().is_empty() {
        cx.report(span, "cluster.etcd.endpoints", "at least one endpoint is required");
    }
    let prefix = match c.etcd.prefix {
        None => d::CLUSTER_PREFIX.to_string(),
        Some(p) => {
            let v = p.get_ref().trim_end_matches('/').to_string();
            if !v.starts_with('/') {
                cx.report(
                    p.span(),
                    "cluster.etcd.prefix",
                    "expected a key prefix starting with `/`",
                );
            }
            v
        }
    };
    let lease = cx.duration(
        c.etcd.lease,
        "cluster.etcd.lease",
        d::CLUSTER_LEASE,
        Duration::from_secs(2),
        Duration::from_secs(600),
    );
    ClusterConfig {
        instance,
        endpoints,
        prefix,
        lease,
    }
}

fn validate_access_log(cx: &Ctx<'_>, a: super::file::RawAccessLog, base_dir: &Path) -> AccessLogConfig {
    let format = match a.format {
        None => AccessLogFormat::Json,
        Some(f) => match f.get_ref().as_str() {
            "json" => AccessLogFormat::Json,
            "combined" => AccessLogFormat::Combined,
            other => {
                cx.report(
                    f.span(),
                    "access_log.format",
                    format!("`{other}`: expected \"json\" or \"combined\""),
                );
                AccessLogFormat::Json
            }
        },
    };
    let path = match a.path {
        None => None,
        Some(p) if p.get_ref() == "-" => None,
        Some(p) if p.get_ref().trim().is_empty() => {
            cx.report(p.span(), "access_log.path", "expected a file, or \"-\" for stderr");
            None
        }
        Some(p) => {
            let path = base_dir.join(p.get_ref());
            // Opened (and created) here, as `nginx -t` does, so a path the
            // process cannot write is refused with its position instead of
            // losing every line later.
            if let Err(e) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                cx.report(
                    p.span(),
                    "access_log.path",
                    format!("cannot open {} for appending: {e}", path.display()),
                );
            }
            Some(path)
        }
    };
    AccessLogConfig { format, path }
}

fn validate_trusted(cx: &Ctx<'_>, list: Option<Spanned<Vec<String>>>) -> Vec<IpNet> {
    let Some(list) = list else { return Vec::new() };
    let span = list.span();
    list.into_inner()
        .iter()
        .filter_map(|s| match s.parse::<IpNet>() {
            Ok(n) => Some(n),
            Err(e) => {
                cx.report(span.clone(), "limits.trusted_proxies", e);
                None
            }
        })
        .collect()
}

fn validate_limits(cx: &Ctx<'_>, l: super::file::RawLimits) -> Limits {
    let max_header_bytes = cx.size(
        l.max_header_bytes,
        "limits.max_header_bytes",
        d::MAX_HEADER_BYTES as u64,
        MIN_HEADER_BYTES,
        MIB,
    );
    Limits {
        max_connections: cx.number(
            l.max_connections,
            "limits.max_connections",
            d::MAX_CONNECTIONS,
            1,
            1_000_000,
        ),
        header_read_timeout: cx.duration(
            l.header_read_timeout,
            "limits.header_read_timeout",
            d::HEADER_READ_TIMEOUT,
            100 * MS,
            10 * MIN,
        ),
        max_header_bytes: max_header_bytes as usize,
        max_headers: cx.number(l.max_headers, "limits.max_headers", d::MAX_HEADERS, 1, 1000),
        tls_handshake_timeout: cx.duration(
            l.tls_handshake_timeout,
            "limits.tls_handshake_timeout",
            d::TLS_HANDSHAKE_TIMEOUT,
            100 * MS,
            10 * MIN,
        ),
        h2_max_concurrent_streams: cx.number(
            l.h2_max_concurrent_streams,
            "limits.h2_max_concurrent_streams",
            d::H2_MAX_CONCURRENT_STREAMS,
            1,
            10_000,
        ),
        client_body_timeout: cx.duration(
            l.client_body_timeout,
            "limits.client_body_timeout",
            d::CLIENT_BODY_TIMEOUT,
            SEC,
            HOUR,
        ),
        client_send_timeout: cx.duration(
            l.client_send_timeout,
            "limits.client_send_timeout",
            d::CLIENT_SEND_TIMEOUT,
            SEC,
            HOUR,
        ),
        tunnel_idle_timeout: cx.duration(
            l.tunnel_idle_timeout,
            "limits.tunnel_idle_timeout",
            d::TUNNEL_IDLE_TIMEOUT,
            SEC,
            7 * DAY,
        ),
        max_response_header_bytes: cx.size(
            l.max_response_header_bytes,
            "limits.max_response_header_bytes",
            d::MAX_RESPONSE_HEADER_BYTES as u64,
            MIN_HEADER_BYTES,
            MIB,
        ) as usize,
        max_response_headers: cx.number(
            l.max_response_headers,
            "limits.max_response_headers",
            d::MAX_RESPONSE_HEADERS,
            1,
            10_000,
        ),
        trusted_proxies: validate_trusted(cx, l.trusted_proxies),
    }
}

fn validate_pool(cx: &Ctx<'_>, name: &str, rp: RawPool, span: Range<usize>, base_dir: &Path) -> Option<PoolConfig> {
    let key = format!("pools.{name}");
    let k = |sub: &str| format!("{key}.{sub}");
    let balance = match rp.balance.unwrap_or(RawBalance::LeastConn) {
        RawBalance::LeastConn => Balance::LeastConn,
        RawBalance::P2c => Balance::P2c,
        RawBalance::RoundRobin => Balance::RoundRobin,
        RawBalance::PeakEwma => Balance::PeakEwma,
        RawBalance::Hash => Balance::Hash,
    };
    let hash_key = match rp.hash_key {
        None => HashKey::ClientIp,
        Some(h) => {
            if balance != Balance::Hash {
                cx.report(h.span(), k("hash_key"), "only applies to balance = \"hash\"");
            }
            parse_hash_key(h.get_ref()).unwrap_or_else(|m| {
                cx.report(h.span(), k("hash_key"), m);
                HashKey::ClientIp
            })
        }
    };
    let max_concurrency = cx.number(
        rp.max_concurrency,
        &k("max_concurrency"),
        d::MAX_CONCURRENCY,
        1,
        100_000,
    );
    let mut seen = HashSet::new();
    let mut backends = Vec::with_capacity(rp.backends.len());
    for (i, b) in rp.backends.into_iter().enumerate() {
        let bkey = format!("{key}.backends[{i}]");
        let weight = cx.number(b.weight, &format!("{bkey}.weight"), d::WEIGHT, 1, 1000);
        let Some(address) = cx.address(&b.address, &format!("{bkey}.address")) else {
            continue;
        };
        if !seen.insert(address) {
            cx.report(
                b.address.span(),
                format!("{bkey}.address"),
                format!("{address} is listed twice"),
            );
        }
        let written = b.address.get_ref();
        let host = written
            .rsplit_once(':')
            .map(|(h, _)| h)
            .filter(|h| h.parse::<std::net::IpAddr>().is_err() && !h.starts_with('['))
            .map(str::to_string);
        backends.push(BackendConfig { address, host, weight });
    }
    if backends.is_empty() && rp.autoscale.is_none() && rp.backends_from.is_none() && cx.errors.borrow().is_empty() {
        cx.report(
            span.clone(),
            key.clone(),
            "a pool needs at least one backend (or an `autoscale` table, or `backends_from`)",
        );
    }
    let autoscale = rp.autoscale.and_then(|a| {
        let table = a.span();
        validate_autoscale(cx, &key, table, a.into_inner(), base_dir)
    });
    let backends_from = rp.backends_from.and_then(|b| {
        let at = b.span();
        let from = validate_backends_from(cx, &key, b.into_inner())?;
        if autoscale.as_ref().is_some_and(|a| a.hook().is_some()) {
            cx.report(
                at,
                k("backends_from"),
                "members come from DNS or from an autoscale hook, not both (use autoscale.mode = \"export\")",
            );
        }
        Some(from)
    });
    let health = match rp.health {
        Some(h) => Some(validate_health(cx, &key, h)),
        // Members from DNS join warming: a connect must succeed first.
        None if backends_from.is_some() => Some(new_member_check(CheckKind::Tcp)),
        // Provisioned backends join warming and need a check to pass.
        None if autoscale.as_ref().is_some_and(|a| a.hook().is_some()) => Some(new_member_check(CheckKind::Http)),
        None => None,
    };
    let passive = validate_passive(cx, &key, rp.passive);
    let (queue_depth, queue_timeout, sheddable_share, sheddable_timeout) = match rp.queue {
        Some(q) => (q.max_depth, q.timeout, q.sheddable_share, q.sheddable_timeout),
        None => (None, None, None, None),
    };
    let sheddable_share = match sheddable_share {
        Some(v) if !(0.0..=1.0).contains(v.get_ref()) => {
            cx.report(
                v.span(),
                k("queue.sheddable_share"),
                format!("must be between 0.0 and 1.0, found {}", v.get_ref()),
            );
            d::QUEUE_SHEDDABLE_SHARE
        }
        Some(v) => *v.get_ref(),
        None => d::QUEUE_SHEDDABLE_SHARE,
    };
    let t = rp.timeouts;
    let (connect, response_header, idle, read) = match t {
        Some(t) => (t.connect, t.response_header, t.idle, t.read),
        None => (None, None, None, None),
    };
    let (retries_connect, idempotent) = match rp.retries {
        Some(r) => (r.connect, r.idempotent),
        None => (None, None),
    };
    Some(PoolConfig {
        name: name.to_string(),
        balance,
        hash_key,
        max_concurrency,
        queue_max_depth: cx.number(queue_depth, &k("queue.max_depth"), d::QUEUE_MAX_DEPTH, 0, 10_000_000),
        queue_timeout: cx.duration(
            queue_timeout,
            &k("queue.timeout"),
            d::QUEUE_TIMEOUT,
            Duration::ZERO,
            HOUR,
        ),
        queue_sheddable_share: sheddable_share,
        queue_sheddable_timeout: cx.duration(
            sheddable_timeout,
            &k("queue.sheddable_timeout"),
            d::QUEUE_SHEDDABLE_TIMEOUT,
            Duration::ZERO,
            HOUR,
        ),
        connect_timeout: cx.duration(connect, &k("timeouts.connect"), d::CONNECT_TIMEOUT, MS, MIN),
        response_header_timeout: cx.duration(
            response_header,
            &k("timeouts.response_header"),
            d::RESPONSE_HEADER_TIMEOUT,
            MS,
            HOUR,
        ),
        idle_timeout: cx.duration(idle, &k("timeouts.idle"), d::UPSTREAM_IDLE_TIMEOUT, SEC, HOUR),
        read_timeout: cx.duration(read, &k("timeouts.read"), d::UPSTREAM_READ_TIMEOUT, SEC, DAY),
        max_idle_per_backend: cx.number(
            rp.max_idle_per_backend,
            &k("max_idle_per_backend"),
            d::MAX_IDLE_PER_BACKEND,
            0,
            4096,
        ),
        upstream_tls: rp.upstream_tls.map(|t| validate_upstream_tls(cx, &key, t, base_dir)),
        upstream: match rp.upstream.unwrap_or(RawUpstream::Http1) {
            RawUpstream::Http1 => UpstreamProtocol::Http1,
            RawUpstream::H2c => UpstreamProtocol::H2c,
        },
        connect_retries: cx.number(retries_connect, &k("retries.connect"), d::CONNECT_RETRIES, 0, 10),
        retry_idempotent: idempotent.unwrap_or(false),
        health,
        passive,
        slow_start: cx.duration(rp.slow_start, &k("slow_start"), d::SLOW_START, Duration::ZERO, HOUR),
        fail_open: rp.fail_open.unwrap_or(false),
        autoscale,
        backends_from,
        backends,
    })
}

/// The check a pool without a `health` table gets when members join at
/// run time (they start `warming` and need one pass): frequent, so a new
/// member takes traffic soon.
fn new_member_check(kind: CheckKind) -> HealthCheck {
    HealthCheck {
        kind,
        path: d::HEALTH_PATH.to_string(),
        interval: d::AUTOSCALE_HEALTH_INTERVAL,
        timeout: d::HEALTH_TIMEOUT,
        healthy: 1,
        unhealthy: d::HEALTH_UNHEALTHY,
        expect: d::HEALTH_EXPECT,
    }
}

fn validate_backends_from(cx: &Ctx<'_>, pool: &str, raw: RawBackendsFrom) -> Option<DnsMembers> {
    let key = format!("{pool}.backends_from");
    let interval = cx.duration(raw.interval, &format!("{key}.interval"), d::DNS_INTERVAL, SEC, HOUR);
    let nameserver = raw.nameserver.and_then(|n| match super::net::nameserver(n.get_ref()) {
        Ok(a) => Some(a),
        Err(m) => {
            cx.report(n.span(), format!("{key}.nameserver"), m);
            None
        }
    });
    match super::net::dns_target(raw.dns.get_ref()) {
        Ok((name, lookup)) => Some(DnsMembers {
            name,
            lookup,
            interval,
            nameserver,
        }),
        Err(m) => {
            cx.report(raw.dns.span(), format!("{key}.dns"), m);
            None
        }
    }
}

/// A listener's certificate chain (`cert`) or private key file: readable
/// and holding what it should, else an error at its place in the file.
fn check_pem<T>(cx: &Ctx<'_>, at: &Spanned<T>, path: &Path, key: &str, cert: bool) {
    if let Some(why) = pem_problem(path, cert) {
        cx.report(at.span(), key, format!("{}: {why}", path.display()));
    }
}

/// What is wrong with the PEM file at `path` (certificates, or one private
/// key), if anything.
fn pem_problem(path: &Path, cert: bool) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    if cert {
        match rustls_pki_types::CertificateDer::pem_file_iter(path).and_then(|i| i.collect::<Result<Vec<_>, _>>()) {
            Ok(c) if c.is_empty() => Some("holds no PEM certificate".to_string()),
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        }
    } else {
        rustls_pki_types::PrivateKeyDer::from_pem_file(path)
            .err()
            .map(|e| e.to_string())
    }
}

/// An exec hook's program: a path with a `/` is taken relative to the
/// config file (like certificate paths), a bare name is looked up in
/// `PATH`; either way it must be an executable file.
fn resolve_program(program: &str, base_dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let path: PathBuf = base_dir
            .join(program)
            .components()
            .filter(|c| *c != std::path::Component::CurDir)
            .collect();
        return match std::fs::metadata(&path) {
            Err(e) => Err(format!("{}: {e}", path.display())),
            Ok(_) if !executable(&path) => Err(format!("{} is not an executable file", path.display())),
            Ok(_) => Ok(path),
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("`{program}` is not an executable in PATH"))
}

fn validate_upstream_tls(cx: &Ctx<'_>, pool_key: &str, t: super::file::RawUpstreamTls, base_dir: &Path) -> UpstreamTls {
    let server_name = t.server_name.and_then(|n| {
        if rustls_pki_types::ServerName::try_from(n.get_ref().as_str()).is_err() {
            cx.report(
                n.span(),
                format!("{pool_key}.upstream_tls.server_name"),
                format!("`{}` is not a DNS name or an IP address", n.get_ref()),
            );
            return None;
        }
        Some(n.into_inner())
    });
    let ca = t.ca.map(|c| {
        let path = base_dir.join(c.get_ref());
        if let Some(why) = pem_problem(&path, true) {
            cx.report(
                c.span(),
                format!("{pool_key}.upstream_tls.ca"),
                format!("cannot read {}: {why}", path.display()),
            );
        }
        path
    });
    UpstreamTls { server_name, ca }
}

fn validate_autoscale(
    cx: &Ctx<'_>,
    pool_key: &str,
    table: Range<usize>,
    a: RawAutoscale,
    base_dir: &Path,
) -> Option<AutoscaleConfig> {
    let key = format!("{pool_key}.autoscale");
    let k = |sub: &str| format!("{key}.{sub}");
    let export = a
        .mode
        .as_ref()
        .is_some_and(|m| *m.get_ref() == RawAutoscaleMode::Export);
    let min: u32 = cx.number(a.min, &k("min"), 1, 0, 10_000);
    let max: u32 = match a.max {
        Some(m) if *m.get_ref() < u64::from(min.max(1)) || *m.get_ref() > 10_000 => {
            cx.report(
                m.span(),
                k("max"),
                format!("must be at least `min` ({min}) and 1, and at most 10000"),
            );
            min.max(1)
        }
        Some(m) => *m.get_ref() as u32,
        None => {
            cx.report(table.clone(), k("max"), "is required (the most backends to ask for)");
            min.max(1)
        }
    };
    let mode = match (a.hook, export) {
        (Some(h), false) => AutoscaleMode::Hook(validate_hook(cx, &key, h, base_dir)?),
        (None, true) => AutoscaleMode::Export,
        (Some(h), true) => {
            cx.report(
                h.span(),
                k("hook"),
                "mode = \"export\" never calls a hook: remove `hook`, or set mode = \"hook\"",
            );
            return None;
        }
        (None, false) => {
            cx.report(
                table,
                k("hook"),
                "is required (the provisioner to call), unless mode = \"export\"",
            );
            return None;
        }
    };
    let mut schedule = Vec::with_capacity(a.schedule.len());
    for (i, e) in a.schedule.into_iter().enumerate() {
        use super::schedule::{parse_when, Entry, When};
        let sk = format!("{key}.schedule[{i}]");
        let start = parse_when(e.start.get_ref()).map_err(|m| cx.report(e.start.span(), format!("{sk}.start"), m));
        let end = parse_when(e.end.get_ref()).map_err(|m| cx.report(e.end.span(), format!("{sk}.end"), m));
        let min = cx.number(Some(e.min), &format!("{sk}.min"), 0, 0, 10_000);
        let (Ok(start), Ok(end)) = (start, end) else { continue };
        match (start, end) {
            (When::At(s), When::At(t)) if t <= s => {
                cx.report(e.end.span(), format!("{sk}.end"), "must be after `start`");
            }
            (When::At(_), When::At(_)) | (When::Daily(_), When::Daily(_)) => {
                schedule.push(Entry { start, end, min });
            }
            _ => cx.report(
                e.end.span(),
                format!("{sk}.end"),
                "`start` and `end` must both be dates or both daily times",
            ),
        }
    }
    let guards = Guards {
        max_step_up: a
            .max_step_up
            .map(|v| cx.number(Some(v), &k("max_step_up"), 1, 1, 10_000)),
        max_step_down: a
            .max_step_down
            .map(|v| cx.number(Some(v), &k("max_step_down"), 1, 1, 10_000)),
        cooldown_up: cx
            .duration(a.cooldown_up, &k("cooldown_up"), Duration::ZERO, Duration::ZERO, DAY)
            .as_secs(),
        cooldown_down: cx
            .duration(
                a.cooldown_down,
                &k("cooldown_down"),
                Duration::ZERO,
                Duration::ZERO,
                DAY,
            )
            .as_secs(),
    };
    Some(AutoscaleConfig {
        guards,
        schedule,
        min,
        max,
        dry_run: a.dry_run.unwrap_or(false),
        mode,
        provisioning_delay: cx.duration(
            a.provisioning_delay,
            &k("provisioning_delay"),
            d::PROVISIONING_DELAY,
            Duration::ZERO,
            HOUR,
        ),
        scale_down_window: cx.duration(
            a.scale_down_window,
            &k("scale_down_window"),
            d::SCALE_DOWN_WINDOW,
            SEC,
            DAY,
        ),
        slo: cx.duration(a.slo, &k("slo"), d::AUTOSCALE_SLO, MS, MIN),
        ready_deadline: cx.duration(a.ready_deadline, &k("ready_deadline"), d::READY_DEADLINE, SEC, DAY),
        drain_timeout: cx.duration(a.drain_timeout, &k("drain_timeout"), d::DRAIN_TIMEOUT, SEC, DAY),
    })
}

/// A pool's `autoscale.hook` table (`key` is the autoscale table's).
fn validate_hook(cx: &Ctx<'_>, key: &str, hook: Spanned<RawHook>, base_dir: &Path) -> Option<HookConfig> {
    let k = |sub: &str| format!("{key}.{sub}");
    let span = hook.span();
    let hook_timeout = |t: Option<super::units::HumanDuration>| -> Duration {
        match t {
            Some(t) if t.0 < 100 * MS || t.0 > 10 * MIN => {
                cx.report(span.clone(), k("hook.timeout"), "must be between 100ms and 10m");
                d::HOOK_TIMEOUT
            }
            Some(t) => t.0,
            None => d::HOOK_TIMEOUT,
        }
    };
    let hook = match hook.into_inner() {
        RawHook::Docker {
            image,
            network,
            port,
            labels,
            socket,
            command,
            timeout,
        } => {
            for (field, value) in [("image", &image), ("network", &network)] {
                if value.trim().is_empty() {
                    cx.report(span.clone(), k(&format!("hook.{field}")), "must not be empty");
                }
            }
            let port = match port {
                Some(p) if !(1..=65_535).contains(&p) => {
                    cx.report(span.clone(), k("hook.port"), "must be between 1 and 65535");
                    d::DOCKER_PORT
                }
                Some(p) => p as u16,
                None => d::DOCKER_PORT,
            };
            if let Some(reserved) = labels.keys().find(|l| l.starts_with("tidegate.")) {
                cx.report(
                    span.clone(),
                    k("hook.labels"),
                    format!("`{reserved}`: labels starting with `tidegate.` are tidegate's own"),
                );
            }
            HookConfig::Docker {
                image,
                network,
                port,
                labels,
                socket: socket.map_or_else(|| PathBuf::from(d::DOCKER_SOCKET), |s| base_dir.join(s)),
                command: command.unwrap_or_default(),
                timeout: match timeout {
                    Some(_) => hook_timeout(timeout),
                    None => d::DOCKER_HOOK_TIMEOUT,
                },
            }
        }
        RawHook::Exec {
            mut command,
            timeout,
            env,
        } => {
            if command.is_empty() || command[0].trim().is_empty() {
                cx.report(span.clone(), k("hook.command"), "needs a program to run");
            } else {
                match resolve_program(&command[0], base_dir) {
                    Ok(program) => command[0] = program.display().to_string(),
                    Err(why) => cx.report(span.clone(), k("hook.command"), why),
                }
            }
            if let Some(bad) = env.iter().find(|n| n.is_empty() || n.contains('=')) {
                cx.report(
                    span.clone(),
                    k("hook.env"),
                    format!("`{bad}` is not a variable name (list names only: env = [\"AWS_PROFILE\"])"),
                );
            }
            HookConfig::Exec {
                command,
                timeout: hook_timeout(timeout),
                env,
            }
        }
        RawHook::Webhook { url, timeout, ca } => {
            let uri = url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some());
            let Some(uri) = uri else {
                cx.report(
                    span.clone(),
                    k("hook.url"),
                    format!("`{url}` is not an http:// or https:// URL"),
                );
                return None;
            };
            let ca = ca.map(|c| base_dir.join(c));
            if let Some(ca) = &ca {
                if pem_problem(ca, true).is_some() {
                    cx.report(
                        span.clone(),
                        k("hook.ca"),
                        format!("cannot read PEM certificates from {}", ca.display()),
                    );
                }
            }
            HookConfig::Webhook {
                url: uri,
                timeout: hook_timeout(timeout),
                ca,
            }
        }
        RawHook::Local {
            service_time,
            concurrency,
            timeout,
        } => HookConfig::Local {
            service_time: match service_time {
                Some(t) if t.0 > MIN => {
                    cx.report(span.clone(), k("hook.service_time"), "must be at most 1m");
                    d::LOCAL_SERVICE_TIME
                }
                Some(t) => t.0,
                None => d::LOCAL_SERVICE_TIME,
            },
            concurrency: match concurrency {
                Some(c) if !(1..=10_000).contains(&c) => {
                    cx.report(span.clone(), k("hook.concurrency"), "must be between 1 and 10000");
                    d::LOCAL_CONCURRENCY
                }
                Some(c) => c as usize,
                None => d::LOCAL_CONCURRENCY,
            },
            timeout: hook_timeout(timeout),
        },
    };
    Some(hook)
}

fn validate_health(cx: &Ctx<'_>, pool_key: &str, h: RawHealth) -> HealthCheck {
    let key = format!("{pool_key}.health");
    let k = |sub: &str| format!("{key}.{sub}");
    let path = match h.path {
        Some(p) if !p.get_ref().starts_with('/') => {
            cx.report(p.span(), k("path"), "must start with `/`");
            d::HEALTH_PATH.to_string()
        }
        Some(p) => p.into_inner(),
        None => d::HEALTH_PATH.to_string(),
    };
    let expect = match h.expect {
        Some(e) => parse_status_range(e.get_ref()).unwrap_or_else(|m| {
            cx.report(e.span(), k("expect"), m);
            d::HEALTH_EXPECT
        }),
        None => d::HEALTH_EXPECT,
    };
    HealthCheck {
        kind: match h.kind {
            Some(RawCheckKind::Tcp) => CheckKind::Tcp,
            _ => CheckKind::Http,
        },
        path,
        interval: cx.duration(h.interval, &k("interval"), d::HEALTH_INTERVAL, 10 * MS, HOUR),
        timeout: cx.duration(h.timeout, &k("timeout"), d::HEALTH_TIMEOUT, 10 * MS, MIN),
        healthy: cx.number(h.healthy, &k("healthy"), d::HEALTH_HEALTHY, 1, 100),
        unhealthy: cx.number(h.unhealthy, &k("unhealthy"), d::HEALTH_UNHEALTHY, 1, 100),
        expect,
    }
}

fn validate_passive(cx: &Ctx<'_>, pool_key: &str, p: Option<RawPassive>) -> PassiveHealth {
    let key = format!("{pool_key}.passive");
    let k = |sub: &str| format!("{key}.{sub}");
    let Some(p) = p else {
        return PassiveHealth {
            consecutive_failures: d::PASSIVE_FAILURES,
            ejection: d::PASSIVE_EJECTION,
            max_ejection: d::PASSIVE_MAX_EJECTION,
            max_ejected_percent: d::PASSIVE_MAX_EJECTED_PERCENT,
        };
    };
    let ejection = cx.duration(p.ejection, &k("ejection"), d::PASSIVE_EJECTION, SEC, HOUR);
    PassiveHealth {
        consecutive_failures: cx.number(
            p.consecutive_failures,
            &k("consecutive_failures"),
            d::PASSIVE_FAILURES,
            1,
            1000,
        ),
        ejection,
        max_ejection: cx.duration(
            p.max_ejection,
            &k("max_ejection"),
            d::PASSIVE_MAX_EJECTION.max(ejection),
            ejection,
            DAY,
        ),
        max_ejected_percent: cx.number(
            p.max_ejected_percent,
            &k("max_ejected_percent"),
            d::PASSIVE_MAX_EJECTED_PERCENT,
            0,
            100,
        ),
    }
}

/// `"200-399"` or a single status `"204"`.
fn parse_status_range(text: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|c| (100..600).contains(c));
    match (parse(lo), parse(hi)) {
        (Some(lo), Some(hi)) if lo <= hi => Ok((lo, hi)),
        _ => Err(format!(
            "expected a status or a range such as \"200-399\", found `{text}`"
        )),
    }
}

/// `client_ip`, `header:<name>` or `cookie:<name>`.
fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    if text == "client_ip" {
        return Ok(HashKey::ClientIp);
    }
    if let Some(h) = text.strip_prefix("header:") {
        return http::HeaderName::from_bytes(h.trim().as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("`{h}` is not a valid header name"));
    }
    if let Some(c) = text.strip_prefix("cookie:") {
        if !c.trim().is_empty() {
            return Ok(HashKey::Cookie(c.trim().to_string()));
        }
    }
    Err(format!(
        "expected `client_ip`, `header:<name>` or `cookie:<name>`, found `{text}`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[listener]]
name = "web"
listen = "127.0.0.1:8080"

[pools.shop]
backends = [ { address = "127.0.0.1:9001" } ]
"#;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, "t.toml", Path::new("."), &super::super::resolve)
    }

    fn invalid(text: &str) -> (usize, usize, String, String) {
        match parse_str(text).unwrap_err() {
            ConfigError::Invalid {
                line,
                col,
                key,
                message,
                ..
            } => (line, col, key, message),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn without_a_cluster_table_the_instance_decides_alone() {
        assert_eq!(parse_str(MINIMAL).unwrap().cluster, None);
    }

    #[test]
    fn the_cluster_table_gets_its_defaults_and_a_host_name() {
        let c = parse_str(&format!(
            "{MINIMAL}\n[cluster]\netcd = {{ endpoints = [\"http://127.0.0.1:2379\"] }}\n"
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert!(!c.instance.is_empty());
        assert_eq!(c.prefix, d::CLUSTER_PREFIX);
        assert_eq!(c.lease, d::CLUSTER_LEASE);
        let c = parse_str(&format!(
            "{MINIMAL}\n[cluster]\ninstance = \"edge-1\"\netcd = {{ endpoints = [\"http://a:2379\", \"http://b:2379\"], prefix = \"/tidegate/shop/\", lease = \"10s\" }}\n"
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!((c.instance.as_str(), c.prefix.as_str()), ("edge-1", "/tidegate/shop"));
        assert_eq!((c.endpoints.len(), c.lease), (2, Duration::from_secs(10)));
    }

    #[test]
    fn cluster_mistakes_point_at_the_key() {
        let cluster = |body: &str| format!("{MINIMAL}\n[cluster]\n{body}\n");
        let (line, _, key, message) = invalid(&cluster("etcd = { endpoints = [\"https://e:2379\"] }"));
        assert_eq!((line, key.as_str()), (10, "cluster.etcd.endpoints"), "{message}");
        assert!(message.contains("https is not supported"), "{message}");
        let (_, _, key, _) = invalid(&cluster("etcd = { endpoints = [] }"));
        assert_eq!(key, "cluster.etcd.endpoints");
        let (_, _, key, _) = invalid(&cluster("etcd = { endpoints = [\"http://e:2379\"], prefix = \"t\" }"));
        assert_eq!(key, "cluster.etcd.prefix");
        let (_, _, key, _) = invalid(&cluster("etcd = { endpoints = [\"http://e:2379\"], lease = \"1s\" }"));
        assert_eq!(key, "cluster.etcd.lease");
        let (_, _, key, _) = invalid(&cluster(
            "instance = \"a/b\"\netcd = { endpoints = [\"http://e:2379\"] }",
        ));
        assert_eq!(key, "cluster.instance");
    }

    #[test]
    fn minimal_config_gets_defaults_and_an_implicit_route() {
        let c = parse_str(MINIMAL).unwrap();
        let shop = &c.pools["shop"];
        assert_eq!(shop.max_concurrency, d::MAX_CONCURRENCY);
        assert_eq!(shop.balance, Balance::LeastConn);
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].pool, "shop");
        assert_eq!(c.limits.max_headers, d::MAX_HEADERS);
    }

    #[test]
    fn unknown_key_is_refused_with_position_and_key() {
        let text = MINIMAL.replace("[pools.shop]", "[pools.shop]\nbalanse = \"p2c\"");
        let (line, col, key, message) = invalid(&text);
        assert_eq!((line, col), (7, 1));
        assert_eq!(key, "pools.shop.balanse");
        assert!(message.contains("unknown field `balanse`"), "{message}");
    }

    #[test]
    fn bad_duration_in_inline_table_names_the_inner_key() {
        let text = MINIMAL.replace(
            "[pools.shop]",
            "[pools.shop]\nqueue = { max_depth = 10, timeout = \"5x\" }",
        );
        let (line, _col, key, message) = invalid(&text);
        assert_eq!(line, 7);
        assert_eq!(key, "pools.shop.queue.timeout");
        assert!(message.contains("unknown unit `x`"), "{message}");
    }

    #[test]
    fn route_to_unknown_pool_points_at_the_pool_value() {
        let text = format!("{MINIMAL}\n[[route]]\npath_prefix = \"/\"\npool = \"shoop\"\n");
        let (line, col, key, message) = invalid(&text);
        assert_eq!((line, col), (11, 8));
        assert_eq!(key, "route[0].pool");
        assert!(message.contains("no pool named `shoop`"), "{message}");
    }

    #[test]
    fn zero_weight_and_duplicate_backends_are_refused() {
        let text = MINIMAL.replace(
            "{ address = \"127.0.0.1:9001\" }",
            "{ address = \"127.0.0.1:9001\", weight = 0 }",
        );
        assert_eq!(invalid(&text).2, "pools.shop.backends[0].weight");
        let text = MINIMAL.replace(
            "{ address = \"127.0.0.1:9001\" }",
            "{ address = \"127.0.0.1:9001\" }, { address = \"127.0.0.1:9001\" }",
        );
        assert!(invalid(&text).3.contains("listed twice"));
    }

    #[test]
    fn non_loopback_admin_needs_a_token() {
        let text = format!("[admin]\nlisten = \"0.0.0.0:9090\"\n{MINIMAL}");
        let (line, _, key, _) = invalid(&text);
        assert_eq!((line, key.as_str()), (2, "admin.listen"));
        let text = format!("[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"s3cret\"\n{MINIMAL}");
        assert!(parse_str(&text).is_ok());
    }

    #[test]
    fn a_docker_hook_has_defaults_and_its_labels_are_checked() {
        let text = MINIMAL.replace(
            "backends = [ { address = \"127.0.0.1:9001\" } ]",
            "backends = []\nautoscale = { min = 1, max = 5, hook = { kind = \"docker\", image = \"shop:local\", network = \"shop\", labels = { app = \"shop\" } } }",
        );
        let c = parse_str(&text).unwrap();
        match c.pools["shop"].autoscale.as_ref().unwrap().hook() {
            Some(HookConfig::Docker {
                port,
                socket,
                timeout,
                labels,
                command,
                ..
            }) => {
                assert_eq!(*port, d::DOCKER_PORT);
                assert_eq!(socket, &PathBuf::from(d::DOCKER_SOCKET));
                assert_eq!(*timeout, d::DOCKER_HOOK_TIMEOUT);
                assert_eq!(labels["app"], "shop");
                assert!(command.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let reserved = text.replace("app = \"shop\"", "\"tidegate.pool\" = \"x\"");
        assert_eq!(invalid(&reserved).2, "pools.shop.autoscale.hook.labels");
        let no_image = text.replace("image = \"shop:local\"", "image = \"\"");
        assert_eq!(invalid(&no_image).2, "pools.shop.autoscale.hook.image");
        let port = text.replace("network = \"shop\"", "network = \"shop\", port = 70000");
        assert_eq!(invalid(&port).2, "pools.shop.autoscale.hook.port");
    }

    #[test]
    fn dns_members_are_checked_and_exclude_a_hook() {
        let dns = MINIMAL.replace(
            "backends = [ { address = \"127.0.0.1:9001\" } ]",
            "backends_from = { dns = \"shop.svc:8080\", nameserver = \"127.0.0.1:5353\" }",
        );
        let c = parse_str(&dns).unwrap();
        let pool = &c.pools["shop"];
        assert_eq!(
            pool.backends_from,
            Some(DnsMembers {
                name: "shop.svc".into(),
                lookup: super::super::DnsLookup::Address { port: 8080 },
                interval: d::DNS_INTERVAL,
                nameserver: Some("127.0.0.1:5353".parse().unwrap()),
            })
        );
        assert!(pool.backends.is_empty() && pool.has_dynamic_members());
        assert_eq!(
            pool.health.as_ref().map(|h| h.kind),
            Some(CheckKind::Tcp),
            "a new member must accept a connection before it takes traffic"
        );
        let (line, col, key, message) = invalid(&dns.replace("shop.svc:8080", "shop.svc"));
        assert_eq!((line, col, key.as_str()), (7, 25, "pools.shop.backends_from.dns"));
        assert!(message.contains("needs a port"), "{message}");
        let (_, _, key, _) = invalid(&dns.replace("127.0.0.1:5353", "dns.local"));
        assert_eq!(key, "pools.shop.backends_from.nameserver");
        let (_, _, key, _) = invalid(&dns.replace("nameserver", "interval = \"10ms\", nameserver"));
        assert_eq!(key, "pools.shop.backends_from.interval");
        let hook = dns.replace(
            " }",
            " }\nautoscale = { min = 1, max = 5, hook = { kind = \"local\" } }",
        );
        let (_, _, key, message) = invalid(&hook);
        assert_eq!(key, "pools.shop.backends_from");
        assert!(message.contains("not both"), "{message}");
        let export = hook.replace("hook = { kind = \"local\" }", "mode = \"export\"");
        assert!(
            parse_str(&export).is_ok(),
            "export mode decides; DNS brings the members"
        );
    }

    #[test]
    fn export_mode_decides_without_a_hook_and_hook_mode_needs_one() {
        let export = MINIMAL.replace(
            "backends = [ { address = \"127.0.0.1:9001\" } ]",
            "backends = [ { address = \"127.0.0.1:9001\" } ]\nautoscale = { mode = \"export\", min = 1, max = 5 }",
        );
        let c = parse_str(&export).unwrap();
        let a = c.pools["shop"].autoscale.clone().unwrap();
        assert_eq!(
            (a.mode.clone(), a.mode_name(), a.acts()),
            (AutoscaleMode::Export, "export", false)
        );
        assert!(
            c.pools["shop"].health.is_none(),
            "nothing is provisioned, so no check is added"
        );
        let with_hook = export.replace("max = 5", "max = 5, hook = { kind = \"local\" }");
        let (line, _, key, message) = invalid(&with_hook);
        assert_eq!((line, key.as_str()), (8, "pools.shop.autoscale.hook"));
        assert!(message.contains("never calls a hook"), "{message}");
        let hookless = export.replace("mode = \"export\", ", "");
        let (_, _, key, message) = invalid(&hookless);
        assert_eq!(key, "pools.shop.autoscale.hook");
        assert!(message.contains("unless mode = \"export\""), "{message}");
        let typo = export.replace("\"export\"", "\"exported\"");
        assert!(invalid(&typo).3.contains("unknown variant `exported`"));
        let hook = with_hook.replace("mode = \"export\", ", "");
        let a = parse_str(&hook).unwrap().pools["shop"].autoscale.clone().unwrap();
        assert_eq!((a.mode_name(), a.acts()), ("hook", true));
    }

    #[test]
    fn an_autoscaled_pool_may_start_empty_and_is_checked() {
        let text = MINIMAL.replace(
            "backends = [ { address = \"127.0.0.1:9001\" } ]",
            "backends = []\nautoscale = { min = 1, max = 5, hook = { kind = \"local\" } }",
        );
        let c = parse_str(&text).unwrap();
        let shop = &c.pools["shop"];
        assert_eq!(shop.autoscale.as_ref().unwrap().max, 5);
        assert!(
            shop.health.is_some(),
            "provisioned backends need a check to leave warming"
        );
        let bad = text.replace("max = 5", "max = 0");
        assert_eq!(invalid(&bad).2, "pools.shop.autoscale.max");
        let bad = text.replace("{ kind = \"local\" }", "{ kind = \"webhook\", url = \"ftp://x\" }");
        assert!(invalid(&bad).3.contains("is not an http:// or https:// URL"));
        let bad = text.replace("{ kind = \"local\" }", "{ kind = \"cloud\" }");
        assert!(invalid(&bad).3.contains("unknown variant `cloud`"));
        let empty = MINIMAL.replace("backends = [ { address = \"127.0.0.1:9001\" } ]", "backends = []");
        assert!(invalid(&empty).3.contains("or an `autoscale` table"));
        let guarded = text.replace(
            "max = 5,",
            "max = 5, max_step_up = 4, max_step_down = 1, cooldown_up = \"30s\", cooldown_down = \"2m\", ready_deadline = \"90s\",",
        );
        let a = parse_str(&guarded).unwrap().pools["shop"].autoscale.clone().unwrap();
        assert_eq!(
            a.guards,
            Guards {
                max_step_up: Some(4),
                max_step_down: Some(1),
                cooldown_up: 30,
                cooldown_down: 120
            }
        );
        assert_eq!(a.ready_deadline, Duration::from_secs(90));
        let (_, col, key, _) = invalid(&text.replace("max = 5,", "max = 5, max_step_up = 0,"));
        assert_eq!((key.as_str(), col > 1), ("pools.shop.autoscale.max_step_up", true));
    }

    #[test]
    fn schedule_entries_parse_or_point_at_the_bad_time() {
        let base = MINIMAL.replace("backends = [ { address = \"127.0.0.1:9001\" } ]", "backends = []")
            + "\n[pools.shop.autoscale]\nmax = 20\nhook = { kind = \"local\" }\n\n[[pools.shop.autoscale.schedule]]\n";
        let ok = format!("{base}start = \"2026-11-27T20:00:00Z\"\nend = \"2026-11-27T22:00:00Z\"\nmin = 12\n");
        let c = parse_str(&ok).unwrap();
        assert_eq!(c.pools["shop"].autoscale.as_ref().unwrap().schedule[0].min, 12);
        let daily = format!("{base}start = \"20:00\"\nend = \"22:00\"\nmin = 12\n");
        assert!(parse_str(&daily).is_ok());
        let bad = format!("{base}start = \"8pm\"\nend = \"22:00\"\nmin = 12\n");
        let (_, _, key, message) = invalid(&bad);
        assert_eq!(key, "pools.shop.autoscale.schedule[0].start");
        assert!(message.contains("daily"), "{message}");
        let mixed = format!("{base}start = \"20:00\"\nend = \"2026-11-27T22:00:00Z\"\nmin = 12\n");
        assert!(invalid(&mixed).3.contains("both"));
    }

    #[test]
    fn hash_key_forms() {
        assert_eq!(parse_hash_key("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(parse_hash_key("cookie:cart"), Ok(HashKey::Cookie("cart".into())));
        assert!(matches!(parse_hash_key("header:x-cart"), Ok(HashKey::Header(_))));
        assert!(parse_hash_key("header:bad header").is_err());
        assert!(parse_hash_key("ip").is_err());
    }

    #[test]
    fn error_display_is_file_line_col_key_message() {
        let text = MINIMAL.replace("[pools.shop]", "[pools.shop]\nmax_concurrency = 0");
        let e = parse_str(&text).unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml:7:19: pools.shop.max_concurrency: must be between 1 and 100000, found 0"),
            "{e}"
        );
    }

    #[test]
    fn every_error_in_a_file_is_reported_not_only_the_first() {
        let text = MINIMAL.replace(
            "[pools.shop]",
            "[limits]\nmax_connections = 9223372036854775807\nmax_header_bytes = \"4GiB\"\nh2_max_concurrent_streams = 0\n\n[pools.shop]\nhealth = { interval = \"0s\" }\nmax_concurrency = 0",
        );
        let e = parse_str(&text).unwrap_err();
        let ConfigError::Several(all) = &e else {
            panic!("expected several errors: {e}")
        };
        let keys: Vec<String> = all
            .iter()
            .map(|e| match e {
                ConfigError::Invalid { key, .. } => key.clone(),
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "limits.max_connections",
                "limits.max_header_bytes",
                "limits.h2_max_concurrent_streams",
                "pools.shop.health.interval",
                "pools.shop.max_concurrency",
            ]
        );
        let shown = e.to_string();
        assert_eq!(shown.lines().count(), 5, "{shown}");
        assert!(shown.lines().all(|l| l.starts_with("t.toml:")), "{shown}");
        assert!(shown.contains("must be between 10ms and 1h, found 0s"), "{shown}");
    }

    #[test]
    fn an_empty_admin_token_is_refused() {
        let text = format!("[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"\"\n{MINIMAL}");
        let (line, _, key, message) = invalid(&text);
        assert_eq!((line, key.as_str()), (3, "admin.token"));
        assert!(message.contains("empty token"), "{message}");
    }

    #[test]
    fn backends_may_be_host_names_and_a_bad_one_names_its_entry() {
        let text = MINIMAL.replace("127.0.0.1:9001", "localhost:9001");
        let c = parse_str(&text).unwrap();
        assert!(c.pools["shop"].backends[0].address.ip().is_loopback());
        assert_eq!(c.pools["shop"].backends[0].address.port(), 9001);
        let bad = MINIMAL.replace("127.0.0.1:9001", "no-such-host.invalid:9001");
        let (line, _, key, message) = invalid(&bad);
        assert_eq!((line, key.as_str()), (7, "pools.shop.backends[0].address"));
        assert!(message.contains("cannot resolve `no-such-host.invalid`"), "{message}");
        let bad = MINIMAL.replace("127.0.0.1:9001", "shop-1");
        assert!(invalid(&bad).3.contains("is not an address"));
    }

    #[test]
    fn route_caches_get_defaults_and_their_mistakes_point_at_their_value() {
        let route = |cache: &str| format!("{MINIMAL}\n[[route]]\npool = \"shop\"\ncache = {{ {cache} }}\n");
        let c = parse_str(&route("ignore_query = [\"utm_*\"], bypass_cookies = [\"session\"]")).unwrap();
        let cache = c.routes[0].cache.as_deref().unwrap();
        assert_eq!((cache.ttl, cache.grace), (d::CACHE_TTL, d::CACHE_GRACE));
        assert_eq!(
            (cache.max_object, cache.lock_timeout),
            (d::CACHE_MAX_OBJECT, d::CACHE_LOCK_TIMEOUT)
        );
        assert_eq!(
            (cache.ignore_query.as_slice(), cache.bypass_cookies.as_slice()),
            (&["utm_*".to_string()][..], &["session".to_string()][..])
        );
        assert_eq!(c.cache_max_bytes, d::CACHE_MAX_BYTES);
        assert!(parse_str(MINIMAL).unwrap().routes[0].cache.is_none());
        // Line 9 is `[[route]]`, 11 the cache table.
        let (line, col, key, message) = invalid(&route("ttl = \"0s\""));
        assert_eq!((line, col, key.as_str()), (11, 17, "route[0].cache.ttl"));
        assert!(message.contains("must be between"), "{message}");
        let (_, _, key, _) = invalid(&route("max_object = \"2GiB\""));
        assert_eq!(key, "route[0].cache.max_object");
        let (_, _, key, message) = invalid(&route("ignore_query = [\"a*b\"]"));
        assert_eq!(key, "route[0].cache.ignore_query");
        assert!(message.contains("`a*b` is not a name"), "{message}");
        let (_, _, key, _) = invalid(&format!("[cache]\nmax_bytes = \"1KiB\"\nmax_objects = 3\n{MINIMAL}"));
        assert_eq!(key, "cache.max_objects", "an unknown key is named");
        let (line, _, key, _) = invalid(&format!("[cache]\nmax_bytes = 10\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (2, "cache.max_bytes"));
    }

    #[test]
    fn h2c_is_never_an_allowed_upgrade() {
        let text = format!("{MINIMAL}\n[[route]]\npool = \"shop\"\nupgrade = [\"websocket\", \"h2c\"]\n");
        let (_, _, key, message) = invalid(&text);
        assert_eq!(key, "route[0].upgrade");
        assert!(message.contains("never tunnelled"), "{message}");
        let ok = format!("{MINIMAL}\n[[route]]\npool = \"shop\"\nupgrade = []\n");
        assert!(parse_str(&ok).unwrap().routes[0].upgrade.is_empty());
        assert_eq!(parse_str(MINIMAL).unwrap().routes[0].upgrade, ["websocket"]);
    }

    #[test]
    fn rate_limits_get_defaults_and_keep_file_order() {
        let text = format!(
            "[limits]\nrate_limit_max_keys = 5000\n{MINIMAL}\n[[rate_limit]]\nname = \"api\"\n\
             match = {{ host = \"Shop.Example\", path_prefix = \"/api\" }}\nkey = \"cookie:session\"\n\
             rate = \"20/s\"\nburst = 40\n\n[[rate_limit]]\nname = \"login\"\nrate = \"6/m\"\n\
             ipv6_prefix = 56\nmax_keys = 100\n"
        );
        let c = parse_str(&text).unwrap();
        let [api, login] = &c.rate_limits[..] else {
            panic!("two rules")
        };
        assert_eq!(api.host.as_deref(), Some("shop.example"));
        assert_eq!(api.path_prefix.as_deref(), Some("/api"));
        assert_eq!(api.key, HashKey::Cookie("session".into()));
        assert_eq!((api.rate.count, api.rate.per, api.burst), (20, SEC, 40));
        assert_eq!((api.ipv6_prefix, api.max_keys), (d::RATE_LIMIT_IPV6_PREFIX, 5000));
        assert_eq!((login.host.as_deref(), login.path_prefix.as_deref()), (None, None));
        assert_eq!(login.key, HashKey::ClientIp);
        assert_eq!((login.rate.count, login.rate.per), (6, MIN));
        assert_eq!(login.burst, 6, "default burst: one period's worth");
        assert_eq!((login.ipv6_prefix, login.max_keys), (56, 100));
        assert_eq!(parse_str(MINIMAL).unwrap().rate_limits.len(), 0);
    }

    #[test]
    fn rate_limit_mistakes_point_at_their_value() {
        let rule = |body: &str| format!("{MINIMAL}\n[[rate_limit]]\nname = \"api\"\n{body}\n");
        // Line 9 is `[[rate_limit]]`, 10 its name, 11 the body's first line.
        let (line, col, key, message) = invalid(&rule("rate = \"20/d\""));
        assert_eq!((line, col), (11, 8));
        assert_eq!(key, "rate_limit.rate");
        assert!(message.contains("unknown unit `d`"), "{message}");
        let (line, col, key, _) = invalid(&rule("rate = \"20/s\"\nburst = 0"));
        assert_eq!((line, col, key.as_str()), (12, 9, "rate_limit[0].burst"));
        let (line, _, key, message) = invalid(&rule("rate = \"20/s\"\nkey = \"ip\""));
        assert_eq!((line, key.as_str()), (12, "rate_limit[0].key"));
        assert!(message.contains("client_ip"), "{message}");
        let (_, _, key, message) = invalid(&rule("rate = \"20/s\"\nmatch = { path_prefix = \"api\" }"));
        assert_eq!(key, "rate_limit[0].match.path_prefix");
        assert!(message.contains("must start with `/`"), "{message}");
        let (_, _, key, _) = invalid(&rule("rate = \"20/s\"\nmatch = { host = \"shop:80\" }"));
        assert_eq!(key, "rate_limit[0].match.host");
        let (_, _, key, _) = invalid(&rule("rate = \"20/s\"\nipv6_prefix = 129"));
        assert_eq!(key, "rate_limit[0].ipv6_prefix");
        let (_, _, key, _) = invalid(&rule("rate = \"2000000/s\""));
        assert_eq!(key, "rate_limit[0].rate");
        let (_, _, key, message) = invalid(&rule("rate = \"1/s\"\nmatch = { path = \"/\" }"));
        assert!(message.contains("unknown field `path`"), "{key}: {message}");
        let twice = format!(
            "{}[[rate_limit]]\nname = \"api\"\nrate = \"1/s\"\n",
            rule("rate = \"1/s\"")
        );
        let (line, col, key, message) = invalid(&twice);
        assert_eq!((line, col, key.as_str()), (13, 8, "rate_limit[1].name"));
        assert!(message.contains("duplicate rate_limit name `api`"), "{message}");
        let (_, _, key, _) = invalid(&rule("rate = \"1/s\"").replace("name = \"api\"", "name = \"a b\""));
        assert_eq!(key, "rate_limit[0].name");
    }

    #[test]
    fn priorities_and_the_sheddable_share_are_checked() {
        let text = format!(
            "{MINIMAL}\n[[route]]\npath_prefix = \"/cart\"\npool = \"shop\"\npriority = \"critical\"\n\
             [[route]]\npool = \"shop\"\npriority = \"sheddable\"\n"
        );
        let c = parse_str(&text).unwrap();
        assert_eq!(c.routes[0].priority, Priority::Critical);
        assert_eq!(c.routes[1].priority, Priority::Sheddable);
        assert_eq!(parse_str(MINIMAL).unwrap().routes[0].priority, Priority::Normal);
        let shop = &parse_str(MINIMAL).unwrap().pools["shop"];
        assert_eq!(shop.queue_sheddable_share, d::QUEUE_SHEDDABLE_SHARE);
        assert_eq!(shop.queue_sheddable_timeout, d::QUEUE_SHEDDABLE_TIMEOUT);
        let (line, _, key, message) = invalid(&format!("{MINIMAL}\n[[route]]\npool = \"shop\"\npriority = \"vip\"\n"));
        assert_eq!((line, key.as_str()), (11, "route.priority"));
        assert!(message.contains("unknown variant `vip`"), "{message}");
        let bad = MINIMAL.replace(
            "[pools.shop]\n",
            "[pools.shop]\nqueue = { max_depth = 10, sheddable_share = 1.5, sheddable_timeout = \"50ms\" }\n",
        );
        let (line, col, key, message) = invalid(&bad);
        assert_eq!((line, col, key.as_str()), (7, 45, "pools.shop.queue.sheddable_share"));
        assert!(message.contains("between 0.0 and 1.0"), "{message}");
        let ok = parse_str(&bad.replace("1.5", "0.25")).unwrap();
        assert_eq!(ok.pools["shop"].queue_sheddable_share, 0.25);
        assert_eq!(ok.pools["shop"].queue_sheddable_timeout, 50 * MS);
    }
}
