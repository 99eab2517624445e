//! Raw file -> [`Config`]: defaults, cross-references and range checks.
//!
//! Control path only; pure (no I/O besides nothing: certificate files are
//! read later, by the TLS layer, before anything is bound). Errors carry the
//! byte span of the offending value, turned into line and column here.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::defaults as d;
use super::file::{
    RawAutoscale, RawBalance, RawCheckKind, RawConfig, RawHealth, RawHook, RawPassive, RawPool, RawUpstream,
};
use super::{
    Admin, AutoscaleConfig, BackendConfig, Balance, CertificatePaths, CheckKind, Config, ConfigError, Guards, HashKey,
    HealthCheck, HookConfig, Limits, Listener, PassiveHealth, PoolConfig, Route, Runtime, Tls, UpstreamProtocol,
};

/// Hyper refuses read buffers smaller than this.
const MIN_HEADER_BYTES: usize = 8192;

struct Ctx<'a> {
    text: &'a str,
    source: &'a str,
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
}

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

pub(super) fn parse(text: &str, source: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    let cx = Ctx { text, source };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        cx.error(span.clone(), key_at(text, span.start), e.message().trim().to_string())
    })?;
    validate(&cx, raw, base_dir)
}

fn validate(cx: &Ctx<'_>, raw: RawConfig, base_dir: &Path) -> Result<Config, ConfigError> {
    let runtime = Runtime {
        worker_threads: match raw.runtime.worker_threads {
            Some(w) if *w.get_ref() == 0 => {
                return Err(cx.error(w.span(), "runtime.worker_threads", "must be at least 1"))
            }
            w => w.map(Spanned::into_inner),
        },
        shutdown_timeout: raw.runtime.shutdown_timeout.map_or(d::SHUTDOWN_TIMEOUT, |x| x.0),
        state_dir: raw.runtime.state_dir.map(|dir| base_dir.join(dir)),
    };

    let admin = match raw.admin {
        None => None,
        Some(a) => {
            let (listen, span) = match a.listen {
                Some(l) => (*l.get_ref(), l.span()),
                None => (d::ADMIN_LISTEN.parse().expect("valid default"), 0..0),
            };
            if !listen.ip().is_loopback() && a.token.is_none() {
                return Err(cx.error(
                    span,
                    "admin.listen",
                    "a non-loopback admin listener needs `admin.token` (a bearer token)",
                ));
            }
            Some(Admin { listen, token: a.token })
        }
    };

    let l = raw.limits;
    let limits = Limits {
        max_connections: positive(cx, l.max_connections, "limits.max_connections", d::MAX_CONNECTIONS)?,
        header_read_timeout: l.header_read_timeout.map_or(d::HEADER_READ_TIMEOUT, |x| x.0),
        max_header_bytes: match l.max_header_bytes {
            Some(b) if (b.get_ref().0 as usize) < MIN_HEADER_BYTES => {
                return Err(cx.error(
                    b.span(),
                    "limits.max_header_bytes",
                    format!("must be at least {MIN_HEADER_BYTES}"),
                ))
            }
            Some(b) => b.get_ref().0 as usize,
            None => d::MAX_HEADER_BYTES,
        },
        max_headers: positive(cx, l.max_headers, "limits.max_headers", d::MAX_HEADERS)?,
        tls_handshake_timeout: l.tls_handshake_timeout.map_or(d::TLS_HANDSHAKE_TIMEOUT, |x| x.0),
        h2_max_concurrent_streams: l.h2_max_concurrent_streams.unwrap_or(d::H2_MAX_CONCURRENT_STREAMS),
    };

    if raw.listeners.is_empty() {
        return Err(cx.error(0..0, "listener", "at least one [[listener]] is required"));
    }
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, rl) in raw.listeners.into_iter().enumerate() {
        let key = format!("listener[{i}]");
        if !names.insert(rl.name.get_ref().clone()) {
            return Err(cx.error(
                rl.name.span(),
                format!("{key}.name"),
                format!("duplicate listener name `{}`", rl.name.get_ref()),
            ));
        }
        // Port 0 asks the OS for a free port: several such listeners never clash.
        if rl.listen.port() != 0 && !addrs.insert(rl.listen) {
            return Err(cx.error(
                rl.name.span(),
                format!("{key}.listen"),
                format!("{} is already used by another listener", rl.listen),
            ));
        }
        let tls = match rl.tls {
            None => None,
            Some(t) => {
                if t.certificates.get_ref().is_empty() {
                    return Err(cx.error(
                        t.certificates.span(),
                        format!("{key}.tls.certificates"),
                        "needs at least one { cert, key } pair",
                    ));
                }
                let span = t.certificates.span();
                let certificates = t
                    .certificates
                    .into_inner()
                    .into_iter()
                    .map(|c| CertificatePaths {
                        cert: base_dir.join(c.cert.into_inner()),
                        key: base_dir.join(c.key.into_inner()),
                    })
                    .collect();
                let _ = span;
                Some(Tls { certificates })
            }
        };
        listeners.push(Listener {
            name: rl.name.into_inner(),
            listen: rl.listen,
            tls,
        });
    }

    let mut pools = BTreeMap::new();
    for (name, rp) in raw.pools {
        let span = rp.span();
        let pool = validate_pool(cx, &name, rp.into_inner(), span)?;
        pools.insert(name, Arc::new(pool));
    }

    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, rr) in raw.routes.into_iter().enumerate() {
        let key = format!("route[{i}]");
        if !pools.contains_key(rr.pool.get_ref()) {
            let known: Vec<&str> = pools.keys().map(String::as_str).collect();
            return Err(cx.error(
                rr.pool.span(),
                format!("{key}.pool"),
                format!("no pool named `{}` (defined: {})", rr.pool.get_ref(), known.join(", ")),
            ));
        }
        let path_prefix = match rr.path_prefix {
            Some(p) if !p.get_ref().starts_with('/') => {
                return Err(cx.error(p.span(), format!("{key}.path_prefix"), "must start with `/`"))
            }
            Some(p) => p.into_inner(),
            None => "/".to_string(),
        };
        let host = match rr.host {
            Some(h) if h.get_ref().is_empty() || h.get_ref().contains(['/', ' ']) => {
                return Err(cx.error(
                    h.span(),
                    format!("{key}.host"),
                    "expected a host name such as `shop.example`",
                ))
            }
            Some(h) => Some(h.into_inner().to_ascii_lowercase()),
            None => None,
        };
        routes.push(Route {
            host,
            path_prefix,
            pool: rr.pool.into_inner(),
            max_body: rr.max_body.map_or(d::MAX_BODY_BYTES, |b| b.0),
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
            }),
            _ => {
                return Err(cx.error(
                    0..0,
                    "route",
                    "at least one [[route]] is required when there is not exactly one pool",
                ))
            }
        }
    }

    Ok(Config {
        source: cx.source.to_string(),
        loaded_from: None,
        runtime,
        admin,
        limits,
        listeners,
        routes,
        pools,
    })
}

fn positive(cx: &Ctx<'_>, v: Option<Spanned<usize>>, key: &str, default: usize) -> Result<usize, ConfigError> {
    match v {
        Some(v) if *v.get_ref() == 0 => Err(cx.error(v.span(), key, "must be at least 1")),
        Some(v) => Ok(v.into_inner()),
        None => Ok(default),
    }
}

fn validate_pool(cx: &Ctx<'_>, name: &str, rp: RawPool, span: Range<usize>) -> Result<PoolConfig, ConfigError> {
    let key = format!("pools.{name}");
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
                return Err(cx.error(
                    h.span(),
                    format!("{key}.hash_key"),
                    "only applies to balance = \"hash\"",
                ));
            }
            parse_hash_key(h.get_ref()).map_err(|m| cx.error(h.span(), format!("{key}.hash_key"), m))?
        }
    };
    let max_concurrency = match rp.max_concurrency {
        Some(m) if *m.get_ref() == 0 => {
            return Err(cx.error(m.span(), format!("{key}.max_concurrency"), "must be at least 1"))
        }
        Some(m) => m.into_inner(),
        None => d::MAX_CONCURRENCY,
    };
    let mut seen = HashSet::new();
    let mut backends = Vec::with_capacity(rp.backends.len());
    for (i, b) in rp.backends.into_iter().enumerate() {
        let address = *b.address.get_ref();
        if !seen.insert(address) {
            return Err(cx.error(
                b.address.span(),
                format!("{key}.backends[{i}].address"),
                format!("{address} is listed twice"),
            ));
        }
        let weight = match b.weight {
            Some(w) if *w.get_ref() == 0 => {
                return Err(cx.error(
                    w.span(),
                    format!("{key}.backends[{i}].weight"),
                    "must be at least 1 (remove the backend to stop sending to it)",
                ))
            }
            Some(w) => w.into_inner(),
            None => d::WEIGHT,
        };
        backends.push(BackendConfig { address, weight });
    }
    if backends.is_empty() && rp.autoscale.is_none() {
        return Err(cx.error(span, key, "a pool needs at least one backend (or an `autoscale` table)"));
    }
    let autoscale = match rp.autoscale {
        Some(a) => Some(validate_autoscale(cx, &key, a)?),
        None => None,
    };
    let health = match rp.health {
        Some(h) => Some(validate_health(cx, &key, h)?),
        // Provisioned backends join warming and need a check to pass.
        None if autoscale.is_some() => Some(HealthCheck {
            kind: CheckKind::Http,
            path: d::HEALTH_PATH.to_string(),
            interval: Duration::from_millis(500),
            timeout: d::HEALTH_TIMEOUT,
            healthy: 1,
            unhealthy: d::HEALTH_UNHEALTHY,
            expect: d::HEALTH_EXPECT,
        }),
        None => None,
    };
    let passive = validate_passive(cx, &key, rp.passive)?;
    let queue = rp.queue;
    let timeouts = rp.timeouts;
    let retries = rp.retries;
    Ok(PoolConfig {
        name: name.to_string(),
        balance,
        hash_key,
        max_concurrency,
        queue_max_depth: queue.as_ref().and_then(|q| q.max_depth).unwrap_or(d::QUEUE_MAX_DEPTH),
        queue_timeout: queue.as_ref().and_then(|q| q.timeout).map_or(d::QUEUE_TIMEOUT, |x| x.0),
        connect_timeout: timeouts
            .as_ref()
            .and_then(|t| t.connect)
            .map_or(d::CONNECT_TIMEOUT, |x| x.0),
        response_header_timeout: timeouts
            .as_ref()
            .and_then(|t| t.response_header)
            .map_or(d::RESPONSE_HEADER_TIMEOUT, |x| x.0),
        idle_timeout: timeouts
            .as_ref()
            .and_then(|t| t.idle)
            .map_or(d::UPSTREAM_IDLE_TIMEOUT, |x| x.0),
        max_idle_per_backend: rp.max_idle_per_backend.unwrap_or(d::MAX_IDLE_PER_BACKEND),
        upstream: match rp.upstream.unwrap_or(RawUpstream::Http1) {
            RawUpstream::Http1 => UpstreamProtocol::Http1,
            RawUpstream::H2c => UpstreamProtocol::H2c,
        },
        connect_retries: retries.as_ref().and_then(|r| r.connect).unwrap_or(d::CONNECT_RETRIES),
        retry_idempotent: retries.as_ref().and_then(|r| r.idempotent).unwrap_or(false),
        health,
        passive,
        slow_start: rp.slow_start.map_or(d::SLOW_START, |x| x.0),
        fail_open: rp.fail_open.unwrap_or(false),
        autoscale,
        backends,
    })
}

fn validate_autoscale(cx: &Ctx<'_>, pool_key: &str, a: RawAutoscale) -> Result<AutoscaleConfig, ConfigError> {
    let key = format!("{pool_key}.autoscale");
    let min = a.min.as_ref().map_or(1, |m| *m.get_ref());
    let max = match a.max {
        Some(m) if *m.get_ref() < min.max(1) => {
            return Err(cx.error(
                m.span(),
                format!("{key}.max"),
                format!("must be at least `min` ({min}) and 1"),
            ))
        }
        Some(m) => m.into_inner(),
        None => {
            return Err(cx.error(
                a.hook.span(),
                format!("{key}.max"),
                "is required (the most backends to ask for)",
            ))
        }
    };
    let span = a.hook.span();
    let hook = match a.hook.into_inner() {
        RawHook::Exec { command, timeout } => {
            if command.is_empty() {
                return Err(cx.error(span, format!("{key}.hook.command"), "needs a program to run"));
            }
            HookConfig::Exec {
                command,
                timeout: timeout.map_or(d::HOOK_TIMEOUT, |t| t.0),
            }
        }
        RawHook::Webhook { url, timeout } => {
            let uri: http::Uri = url
                .parse()
                .ok()
                .filter(|u: &http::Uri| u.scheme_str() == Some("http") && u.authority().is_some())
                .ok_or_else(|| {
                    cx.error(
                        span.clone(),
                        format!("{key}.hook.url"),
                        format!("`{url}` is not an http:// URL"),
                    )
                })?;
            HookConfig::Webhook {
                url: uri,
                timeout: timeout.map_or(d::HOOK_TIMEOUT, |t| t.0),
            }
        }
        RawHook::Local {
            service_time,
            concurrency,
            timeout,
        } => HookConfig::Local {
            service_time: service_time.map_or(d::LOCAL_SERVICE_TIME, |t| t.0),
            concurrency: concurrency.unwrap_or(d::LOCAL_CONCURRENCY),
            timeout: timeout.map_or(d::HOOK_TIMEOUT, |t| t.0),
        },
    };
    let mut schedule = Vec::with_capacity(a.schedule.len());
    for (i, e) in a.schedule.into_iter().enumerate() {
        use super::schedule::{parse_when, Entry, When};
        let k = format!("{key}.schedule[{i}]");
        let start = parse_when(e.start.get_ref()).map_err(|m| cx.error(e.start.span(), format!("{k}.start"), m))?;
        let end = parse_when(e.end.get_ref()).map_err(|m| cx.error(e.end.span(), format!("{k}.end"), m))?;
        match (start, end) {
            (When::At(s), When::At(t)) if t <= s => {
                return Err(cx.error(e.end.span(), format!("{k}.end"), "must be after `start`"))
            }
            (When::At(_), When::At(_)) | (When::Daily(_), When::Daily(_)) => {}
            _ => {
                return Err(cx.error(
                    e.end.span(),
                    format!("{k}.end"),
                    "`start` and `end` must both be dates or both daily times",
                ))
            }
        }
        schedule.push(Entry { start, end, min: e.min });
    }
    let step = |v: Option<Spanned<u32>>, name: &str| {
        v.map(|v| at_least_one(cx, Some(v), format!("{key}.{name}"), 1))
            .transpose()
    };
    let guards = Guards {
        max_step_up: step(a.max_step_up, "max_step_up")?,
        max_step_down: step(a.max_step_down, "max_step_down")?,
        cooldown_up: a.cooldown_up.map_or(0, |t| t.0.as_secs()),
        cooldown_down: a.cooldown_down.map_or(0, |t| t.0.as_secs()),
    };
    Ok(AutoscaleConfig {
        guards,
        schedule,
        min,
        max,
        dry_run: a.dry_run.unwrap_or(false),
        hook,
        provisioning_delay: a.provisioning_delay.map_or(d::PROVISIONING_DELAY, |t| t.0),
        scale_down_window: a.scale_down_window.map_or(d::SCALE_DOWN_WINDOW, |t| t.0),
        slo: a.slo.map_or(d::AUTOSCALE_SLO, |t| t.0),
        ready_deadline: a.ready_deadline.map_or(d::READY_DEADLINE, |t| t.0),
        drain_timeout: a.drain_timeout.map_or(d::DRAIN_TIMEOUT, |t| t.0),
    })
}

fn at_least_one(cx: &Ctx<'_>, v: Option<Spanned<u32>>, key: String, default: u32) -> Result<u32, ConfigError> {
    match v {
        Some(v) if *v.get_ref() == 0 => Err(cx.error(v.span(), key, "must be at least 1")),
        Some(v) => Ok(v.into_inner()),
        None => Ok(default),
    }
}

fn validate_health(cx: &Ctx<'_>, pool_key: &str, h: RawHealth) -> Result<HealthCheck, ConfigError> {
    let key = format!("{pool_key}.health");
    let path = match h.path {
        Some(p) if !p.get_ref().starts_with('/') => {
            return Err(cx.error(p.span(), format!("{key}.path"), "must start with `/`"))
        }
        Some(p) => p.into_inner(),
        None => d::HEALTH_PATH.to_string(),
    };
    let expect = match h.expect {
        Some(e) => parse_status_range(e.get_ref()).map_err(|m| cx.error(e.span(), format!("{key}.expect"), m))?,
        None => d::HEALTH_EXPECT,
    };
    Ok(HealthCheck {
        kind: match h.kind {
            Some(RawCheckKind::Tcp) => CheckKind::Tcp,
            _ => CheckKind::Http,
        },
        path,
        interval: h.interval.map_or(d::HEALTH_INTERVAL, |x| x.0),
        timeout: h.timeout.map_or(d::HEALTH_TIMEOUT, |x| x.0),
        healthy: at_least_one(cx, h.healthy, format!("{key}.healthy"), d::HEALTH_HEALTHY)?,
        unhealthy: at_least_one(cx, h.unhealthy, format!("{key}.unhealthy"), d::HEALTH_UNHEALTHY)?,
        expect,
    })
}

fn validate_passive(cx: &Ctx<'_>, pool_key: &str, p: Option<RawPassive>) -> Result<PassiveHealth, ConfigError> {
    let key = format!("{pool_key}.passive");
    let Some(p) = p else {
        return Ok(PassiveHealth {
            consecutive_failures: d::PASSIVE_FAILURES,
            ejection: d::PASSIVE_EJECTION,
            max_ejection: d::PASSIVE_MAX_EJECTION,
            max_ejected_percent: d::PASSIVE_MAX_EJECTED_PERCENT,
        });
    };
    let max_ejected_percent = match p.max_ejected_percent {
        Some(v) if *v.get_ref() > 100 => {
            return Err(cx.error(
                v.span(),
                format!("{key}.max_ejected_percent"),
                "must be between 0 and 100",
            ))
        }
        Some(v) => v.into_inner(),
        None => d::PASSIVE_MAX_EJECTED_PERCENT,
    };
    Ok(PassiveHealth {
        consecutive_failures: at_least_one(
            cx,
            p.consecutive_failures,
            format!("{key}.consecutive_failures"),
            d::PASSIVE_FAILURES,
        )?,
        ejection: p.ejection.map_or(d::PASSIVE_EJECTION, |x| x.0),
        max_ejection: p.max_ejection.map_or(d::PASSIVE_MAX_EJECTION, |x| x.0),
        max_ejected_percent,
    })
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
        parse(text, "t.toml", Path::new("."))
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
        assert!(invalid(&bad).3.contains("is not an http:// URL"));
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
            e.starts_with("t.toml:7:19: pools.shop.max_concurrency: must be at least 1"),
            "{e}"
        );
    }
}
