//! RFC 9111 for a shared cache, as pure functions over heads: which
//! requests may use the cache, the key a request is stored under, whether
//! a response may be stored and for how long.
//!
//! Data path, no I/O, no time source (ages and lifetimes are plain
//! durations); `proxy/cached.rs` calls these before and after the one
//! upstream request of a key. The choices, written where they are made:
//! - only GET and HEAD use the cache, and HEAD shares GET's entry (the
//!   fetch is always a GET, as nginx's `proxy_cache_convert_head`);
//! - stored statuses: those RFC 9110 15.1 makes heuristically cacheable
//!   (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501), so the
//!   route's `ttl` may apply to them; never 206 (ranges are not stored);
//! - never stored: `no-store`, `private`, `no-cache` (it would need a
//!   revalidation on every use), a zero lifetime, `Vary: *`, `Set-Cookie`,
//!   and the answer to a request with `Authorization` unless the response
//!   says `public`, `s-maxage` or `must-revalidate` (RFC 9111 3.5);
//! - lifetime: `s-maxage`, else `max-age`, else the route's `ttl`; a
//!   response's own `Age` counts against it;
//! - `must-revalidate` and `proxy-revalidate` forbid serving it stale, so
//!   such an object gets no grace.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

use crate::config::CacheConfig;

/// Statuses stored (RFC 9110 15.1's heuristically cacheable ones but 206).
pub(crate) const STORED_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Why a response was not stored (the answer goes to its client only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    Status,
    NoStore,
    Private,
    NoCache,
    ZeroLifetime,
    VaryStar,
    SetCookie,
    Authorization,
    TooLarge,
}

/// How long a stored response stays fresh, and may then be served stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// Freshness lifetime (RFC 9111 4.2.1).
    pub(crate) lifetime: Duration,
    /// The age it already had when it arrived (its `Age` field).
    pub(crate) initial_age: Duration,
    /// How long past `lifetime` it may be served stale.
    pub(crate) grace: Duration,
}

/// Whether a request may use the cache at all: GET or HEAD, no upgrade, no
/// body, and no cookie the route names in `bypass_cookies`.
pub(crate) fn may_use(method: &Method, headers: &HeaderMap, has_body: bool, policy: &CacheConfig) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && !has_body
        && !headers.contains_key(header::UPGRADE)
        && !has_bypass_cookie(headers, &policy.bypass_cookies)
}

fn has_bypass_cookie(headers: &HeaderMap, names: &[String]) -> bool {
    if names.is_empty() {
        return false;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('=').map(|(n, _)| n.trim()))
        .any(|n| names.iter().any(|b| b == n))
}

/// The request asks for a fresh answer (`Cache-Control: no-cache`, or
/// `Pragma: no-cache` without `Cache-Control`): tidegate treats it as a
/// miss that refreshes the stored copy for everyone.
pub(crate) fn wants_refresh(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::CACHE_CONTROL) {
        return directives(headers, header::CACHE_CONTROL).any(|(d, _)| d == "no-cache");
    }
    directives(headers, header::PRAGMA).any(|(d, _)| d == "no-cache")
}

/// The key every variant of a request starts from: scheme (the listener's:
/// a host served with and without TLS may answer differently), host, path
/// and the query without the ignored parameters (in their original order).
/// GET and HEAD share it, so the method is not part of it.
pub(crate) fn base_key(tls: bool, host: Option<&str>, path: &str, query: Option<&str>, ignore: &[String]) -> String {
    let mut key = String::with_capacity(host.map_or(0, str::len) + path.len() + query.map_or(0, str::len) + 10);
    key.push_str(if tls { "https://" } else { "http://" });
    key.push_str(&host.unwrap_or("").to_ascii_lowercase());
    key.push_str(path);
    if let Some(q) = query {
        let mut first = true;
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            if ignored(name, ignore) {
                continue;
            }
            key.push(if first { '?' } else { '&' });
            key.push_str(pair);
            first = false;
        }
    }
    key
}

fn ignored(name: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|i| match i.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == i,
    })
}

/// The key of one variant: the base key plus the request's values of the
/// fields the response varies on (absent fields count as empty).
pub(crate) fn variant_key(base: &str, vary: &[HeaderName], headers: &HeaderMap) -> String {
    let mut key = base.to_string();
    for name in vary {
        key.push('\n');
        key.push_str(name.as_str());
        key.push(':');
        let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
        if let Some(v) = values.next() {
            key.push_str(v.trim());
        }
        for v in values {
            key.push(',');
            key.push_str(v.trim());
        }
    }
    key
}

/// The response's `Vary` field names (lower case, sorted, once each);
/// `None` for `Vary: *`.
pub(crate) fn vary_fields(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut fields = Vec::new();
    for v in headers.get_all(header::VARY).iter().filter_map(|v| v.to_str().ok()) {
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            if let Ok(n) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                fields.push(n);
            }
        }
    }
    fields.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    fields.dedup();
    Some(fields)
}

/// Whether the answer to a request with `request` fields may be stored,
/// and for how long.
pub(crate) fn storable(
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    policy: &CacheConfig,
) -> Result<Freshness, NotStored> {
    if !STORED_STATUSES.contains(&status.as_u16()) {
        return Err(NotStored::Status);
    }
    let (mut s_maxage, mut max_age) = (None, None);
    let (mut public, mut must_revalidate) = (false, false);
    for (d, arg) in directives(response, header::CACHE_CONTROL) {
        match d.as_str() {
            "no-store" => return Err(NotStored::NoStore),
            "private" => return Err(NotStored::Private),
            "no-cache" => return Err(NotStored::NoCache),
            "public" => public = true,
            "must-revalidate" | "proxy-revalidate" => must_revalidate = true,
            "s-maxage" => s_maxage = arg.and_then(|a| a.parse::<u64>().ok()),
            "max-age" => max_age = arg.and_then(|a| a.parse::<u64>().ok()),
            _ => {}
        }
    }
    if response.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if vary_fields(response).is_none() {
        return Err(NotStored::VaryStar);
    }
    if request.contains_key(header::AUTHORIZATION) && !(public || s_maxage.is_some() || must_revalidate) {
        return Err(NotStored::Authorization);
    }
    let lifetime = s_maxage.or(max_age).map_or(policy.ttl, Duration::from_secs);
    let initial_age = response
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    if lifetime.is_zero() || initial_age >= lifetime + policy.grace {
        return Err(NotStored::ZeroLifetime);
    }
    Ok(Freshness {
        lifetime,
        initial_age,
        grace: if must_revalidate { Duration::ZERO } else { policy.grace },
    })
}

/// `name[=arg]` directives of a comma-separated field, names lower-cased,
/// quotes stripped from arguments.
fn directives(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = (String, Option<&str>)> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            let d = d.trim();
            match d.split_once('=') {
                Some((n, a)) => (n.trim().to_ascii_lowercase(), Some(a.trim().trim_matches('"'))),
                None => (d.to_ascii_lowercase(), None),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy() -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_secs(1),
            grace: Duration::from_secs(10),
            max_object: 1 << 20,
            lock_timeout: Duration::from_secs(5),
            ignore_query: vec!["utm_*".into(), "fbclid".into()],
            bypass_cookies: vec!["session".into()],
        }
    }

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_key_drops_ignored_query_parameters_and_keeps_the_rest_in_order() {
        let p = policy();
        assert_eq!(
            base_key(
                false,
                Some("Shop.test"),
                "/p/1",
                Some("utm_source=x&b=2&fbclid=9&a=1"),
                &p.ignore_query
            ),
            "http://shop.test/p/1?b=2&a=1"
        );
        assert_eq!(
            base_key(true, Some("shop.test"), "/p/1", Some("utm_a=1"), &p.ignore_query),
            "https://shop.test/p/1"
        );
    }

    #[test]
    fn variants_differ_by_the_fields_the_response_varies_on() {
        let vary = vary_fields(&headers(&[("vary", "Accept-Encoding, accept-language")])).unwrap();
        let a = variant_key("k", &vary, &headers(&[("accept-encoding", "gzip")]));
        let b = variant_key("k", &vary, &headers(&[("accept-encoding", "br")]));
        assert_ne!(a, b);
        assert_eq!(vary_fields(&headers(&[("vary", "a, *")])), None);
    }

    #[test]
    fn each_never_store_rule_refuses() {
        let p = policy();
        let none = HeaderMap::new();
        let ok = StatusCode::OK;
        let case = |req: &HeaderMap, resp: &[(&'static str, &'static str)]| storable(req, ok, &headers(resp), &p);
        assert_eq!(case(&none, &[("cache-control", "no-store")]), Err(NotStored::NoStore));
        assert_eq!(case(&none, &[("cache-control", "private")]), Err(NotStored::Private));
        assert_eq!(
            case(&none, &[("cache-control", "max-age=0")]),
            Err(NotStored::ZeroLifetime)
        );
        assert_eq!(case(&none, &[("vary", "*")]), Err(NotStored::VaryStar));
        assert_eq!(case(&none, &[("set-cookie", "a=1")]), Err(NotStored::SetCookie));
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_eq!(case(&auth, &[]), Err(NotStored::Authorization));
        assert!(case(&auth, &[("cache-control", "public")]).is_ok());
        assert!(case(&auth, &[("cache-control", "s-maxage=5")]).is_ok());
        assert_eq!(
            storable(&none, StatusCode::PARTIAL_CONTENT, &none, &p),
            Err(NotStored::Status)
        );
    }

    #[test]
    fn s_maxage_wins_over_max_age_over_the_ttl() {
        let p = policy();
        let none = HeaderMap::new();
        let life = |resp: &[(&'static str, &'static str)]| {
            storable(&none, StatusCode::OK, &headers(resp), &p).unwrap().lifetime
        };
        assert_eq!(life(&[]), Duration::from_secs(1));
        assert_eq!(life(&[("cache-control", "max-age=30")]), Duration::from_secs(30));
        assert_eq!(
            life(&[("cache-control", "max-age=30, s-maxage=7")]),
            Duration::from_secs(7)
        );
        let f = storable(
            &none,
            StatusCode::OK,
            &headers(&[("cache-control", "max-age=9, must-revalidate"), ("age", "3")]),
            &p,
        )
        .unwrap();
        assert_eq!((f.initial_age, f.grace), (Duration::from_secs(3), Duration::ZERO));
    }

    #[test]
    fn bypass_cookies_and_methods_decide_who_may_use_the_cache() {
        let p = policy();
        assert!(may_use(&Method::GET, &headers(&[("cookie", "theme=dark")]), false, &p));
        assert!(!may_use(
            &Method::GET,
            &headers(&[("cookie", "theme=dark; session=1")]),
            false,
            &p
        ));
        assert!(!may_use(&Method::POST, &HeaderMap::new(), false, &p));
        assert!(may_use(&Method::HEAD, &HeaderMap::new(), false, &p));
        assert!(wants_refresh(&headers(&[("cache-control", "no-cache")])));
        assert!(wants_refresh(&headers(&[("pragma", "no-cache")])));
        assert!(!wants_refresh(&headers(&[("cache-control", "max-age=0")])));
    }
}
