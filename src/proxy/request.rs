//! Preparing a client's request for a backend: framing checks, the host it
//! is for, the rate limits it must pass, the affinity key, and the
//! rewritten request itself.
//!
//! Data path, functions over the request (no I/O, no await; only
//! [`rate_limit`] writes anything: the matching rules' client budgets): the
//! handler in `mod.rs` calls them in order before any backend is involved,
//! so a malformed or over-the-limit request is refused (400, 429) before a
//! backend sees a byte.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri, Version};

use super::error::ProxyError;
use super::headers;
use super::{ConnContext, Who};
use crate::balance::hash_bytes;
use crate::config::{HashKey, PoolConfig, UpstreamProtocol};
use crate::traffic::ratelimit::{retry_after_secs, Key, RateLimit};
use crate::upstream::body::{ClientBody, RequestBody};

/// Ambiguous or malformed framing, and an authority that is not exactly one
/// `uri-host [":" port]`, are refused before anything is sent. (hyper
/// already refuses conflicting `Content-Length` values, a
/// `Transfer-Encoding` not ending in `chunked`, bad chunk sizes and control
/// characters in fields.)
///
/// One authority is routed on and forwarded: the request target's when it
/// has one (absolute form, HTTP/2 `:authority`; RFC 9112 3.2.2 says a
/// server then ignores `Host`), else `Host`. An HTTP/2 request whose `host`
/// field disagrees with its `:authority` is malformed (RFC 9113 8.3.1).
///
/// What the checks read on the way, the handler needs next: the host to
/// route on ([`request_host`]) and the declared length.
pub(super) fn check_framing(req: &Request<ClientBody>) -> Result<Framing<'_>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    // One pass over the fields (a request has a handful to a few dozen)
    // instead of a hashed lookup per question.
    let (mut chunked, mut lengths, mut hosts, mut host) = (false, 0, 0, None);
    let mut length = None;
    for (name, value) in req.headers() {
        if name == header::TRANSFER_ENCODING {
            chunked = true;
        } else if name == header::CONTENT_LENGTH {
            lengths += 1;
            length = Some(value);
        } else if name == header::HOST {
            hosts += 1;
            host = host.or(Some(value));
        }
    }
    if chunked && lengths > 0 {
        return Err(ProxyError::BadRequest("both Content-Length and Transfer-Encoding"));
    }
    if lengths > 1 {
        return Err(ProxyError::BadRequest("more than one Content-Length"));
    }
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host"));
    }
    if let Some(host) = host {
        if !valid_authority(host.as_bytes()) {
            return Err(ProxyError::BadRequest("Host is not a host[:port]"));
        }
    }
    match req.uri().authority() {
        Some(target) => {
            if !valid_authority(target.as_str().as_bytes()) {
                return Err(ProxyError::BadRequest(
                    "the request target's authority is not a host[:port]",
                ));
            }
            if req.version() == Version::HTTP_2
                && host.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(target.as_str().as_bytes()))
            {
                return Err(ProxyError::BadRequest("host disagrees with :authority"));
            }
        }
        None if host.is_none() && req.version() == Version::HTTP_11 => {
            return Err(ProxyError::BadRequest("HTTP/1.1 request without Host"));
        }
        None => {}
    }
    Ok(Framing {
        host: host_of(req.uri().authority(), host),
        length: length.and_then(length_of),
    })
}

/// What [`check_framing`] found.
pub(super) struct Framing<'a> {
    /// The host the request is for, as [`request_host`] reads it.
    pub(super) host: Option<&'a str>,
    /// The declared `Content-Length`, as [`content_length`] reads it.
    pub(super) length: Option<u64>,
}

/// `uri-host [":" port]` (RFC 9112 3.2, RFC 3986 3.2.2), strictly: a
/// registered name of unreserved characters and percent-escapes (which
/// covers IPv4 addresses) or an IPv6 literal in brackets, then an optional
/// port of at most five digits. No userinfo, no whitespace, no list.
pub(super) fn valid_authority(a: &[u8]) -> bool {
    let (host, port) = if a.first() == Some(&b'[') {
        let Some(close) = a.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &a[1..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        (&a[..=close], &a[close + 1..])
    } else {
        // Up to the first byte a name may not hold: the port's `:`, the
        // end, or a byte that makes the authority invalid below.
        let mut i = 0;
        while i < a.len() {
            match a[i] {
                b if UNRESERVED[usize::from(b)] => i += 1,
                b'%' if a.len() > i + 2 && a[i + 1].is_ascii_hexdigit() && a[i + 2].is_ascii_hexdigit() => i += 3,
                _ => break,
            }
        }
        (&a[..i], &a[i..])
    };
    if host.is_empty() {
        return false;
    }
    match port.split_first() {
        None => true,
        Some((b':', digits)) => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= u32::from(u16::MAX)
        }
        Some(_) => false,
    }
}

/// The host the request is routed on, without port: the request target's
/// authority when it has one, else the `Host` header.
pub(super) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    host_of(req.uri().authority(), req.headers().get(header::HOST))
}

/// The target's authority's host, else the `Host` field's, port stripped.
fn host_of<'a>(authority: Option<&'a http::uri::Authority>, field: Option<&'a HeaderValue>) -> Option<&'a str> {
    match authority {
        Some(a) => Some(strip_port(a.host())),
        None => field.and_then(|h| h.to_str().ok()).map(strip_port),
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.bytes().rposition(|b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

/// The bytes a registered name holds as they are (RFC 3986 `unreserved`):
/// one lookup a byte instead of four comparisons.
static UNRESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    table
};

pub(super) fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH).and_then(length_of)
}

fn length_of(v: &HeaderValue) -> Option<u64> {
    v.to_str().ok()?.parse().ok()
}

pub(super) fn has_no_body<B: http_body::Body>(req: &Request<B>) -> bool {
    req.body().is_end_stream() || content_length(req.headers()) == Some(0)
}

pub(super) fn affinity_key(key: &HashKey, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
    match key {
        HashKey::ClientIp => Some(match client {
            IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        }),
        HashKey::Header(name) => headers.get(name).map(|v| hash_bytes(v.as_bytes())),
        HashKey::Cookie(name) => cookie(headers, name).map(|v| hash_bytes(v.as_bytes())),
    }
}

/// The value of the cookie `name` (the first one, across every `Cookie`
/// field).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Every rule matching `host` and `path` takes one request of the client's
/// budget, in file order; the first that refuses answers 429 (budgets
/// already taken by earlier rules stay taken, as nginx's `limit_req`
/// does). The client is `client`, the address `client.rs` established
/// (socket, PROXY header, or trusted `X-Forwarded-For`), never a header an
/// untrusted peer could forge. A rule keyed on a header or cookie the
/// request lacks keys it by that address instead, so leaving the header
/// out is no way around the limit.
pub(super) fn rate_limit(
    rules: &[Arc<RateLimit>],
    host: Option<&str>,
    path: &str,
    headers: &HeaderMap,
    client: IpAddr,
    now_ns: u64,
) -> Result<(), ProxyError> {
    for rule in rules.iter().filter(|r| r.matches(host, path)) {
        let key = match rule.key_kind() {
            HashKey::ClientIp => None,
            HashKey::Header(name) => headers.get(name).map(|v| Key::value(v.as_bytes())),
            HashKey::Cookie(name) => cookie(headers, name).map(|v| Key::value(v.as_bytes())),
        }
        .unwrap_or_else(|| rule.client_key(client));
        if let Err(wait_ns) = rule.check(key, now_ns) {
            return Err(ProxyError::RateLimited {
                rule: Arc::clone(&rule.name),
                retry_after: retry_after_secs(wait_ns),
            });
        }
    }
    Ok(())
}

/// The request as the backend will see it: origin-form target, HTTP/1.1
/// (or HTTP/2 for h2c pools), `Host` set to the one authority it was routed
/// on, hop-by-hop fields gone (an allowed upgrade's `Upgrade` kept); and
/// the forwarded-for fields it gains, which `send` adds as the backend's
/// protocol needs.
pub(super) fn upstream_request(
    req: Request<RequestBody>,
    upgrade: Option<HeaderValue>,
    conn: &ConnContext,
    who: &Who,
    cfg: &PoolConfig,
) -> (Request<RequestBody>, headers::Forwarded) {
    let client_version = req.version();
    let (mut parts, body) = req.into_parts();
    // Shared, not copied: `host` below clones it.
    if let Some(v) = parts
        .uri
        .authority()
        .and_then(|a| headers::shared_value(a.as_str().as_bytes()))
    {
        parts.headers.insert(header::HOST, v);
    }
    if headers::strip_hop_by_hop(&mut parts.headers, false) {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = upgrade {
        parts.headers.insert(header::UPGRADE, protocol);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // tidegate answers `Expect: 100-continue` itself (hyper sends the 100
    // when the body is first read, i.e. once a backend is ready for it).
    parts.headers.remove(header::EXPECT);
    let host = parts.headers.get(header::HOST).cloned();
    let forwarded = headers::forwarded(
        &mut parts.headers,
        headers::Hop {
            peer: &conn.client_value,
            trusted: who.trusted,
            tls: conn.tls,
        },
        host.as_ref(),
        client_version,
    );
    match cfg.upstream {
        UpstreamProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            if parts.uri.authority().is_some() || parts.uri.scheme().is_some() {
                parts.uri = origin_form(std::mem::take(&mut parts.uri));
            }
        }
        UpstreamProtocol::H2c => {
            parts.version = Version::HTTP_2;
            let authority = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(h2_path(&parts.uri).as_ref())
                .build()
                .unwrap_or_else(|_| Uri::from_static("/"));
            parts.headers.remove(header::HOST);
        }
    }
    (Request::from_parts(parts, body), forwarded)
}

/// `uri`'s path and query alone (an HTTP/2 request's, an absolute-form
/// one's), moved rather than parsed and copied again.
fn origin_form(uri: Uri) -> Uri {
    let mut origin = http::uri::Parts::default();
    origin.path_and_query = uri.into_parts().path_and_query;
    Uri::from_parts(origin).unwrap_or_else(|_| Uri::from_static("/"))
}

/// `uri`'s target as HTTP/2's `:path`, which must start with `/` (RFC
/// 9113 8.3.1): a target that is only a query (`http://h?q`) gets its
/// empty path back.
fn h2_path(uri: &Uri) -> std::borrow::Cow<'_, str> {
    match uri.path_and_query().map(|p| p.as_str()) {
        None => "/".into(),
        Some(p) if p.starts_with('?') => format!("/{p}").into(),
        Some(p) => p.into(),
    }
}

/// A bodiless request's head, kept to resend it (idempotent retries only).
pub(super) struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

pub(super) fn head_of(req: &Request<RequestBody>) -> Head {
    Head {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    }
}

pub(super) fn rebuild(head: &Head) -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::empty());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_targets_go_upstream_in_origin_form() {
        for (target, origin) in [
            ("http://shop.example/p/1?q=a%20b", "/p/1?q=a%20b"),
            ("https://shop.example:8443/", "/"),
            ("http://shop.example", "/"),
            ("http://shop.example?q", "/?q"),
        ] {
            let uri = origin_form(target.parse().unwrap());
            assert_eq!(
                (uri.to_string().as_str(), uri.authority(), uri.scheme()),
                (origin, None, None),
                "{target}"
            );
        }
    }

    #[test]
    fn an_h2_path_always_starts_with_a_slash() {
        for (target, path) in [
            ("http://shop.example/p?q", "/p?q"),
            ("http://shop.example?q", "/?q"),
            ("http://shop.example", "/"),
            ("/p", "/p"),
        ] {
            assert_eq!(h2_path(&target.parse().unwrap()), path, "{target}");
        }
    }

    #[test]
    fn strips_ports_from_hosts() {
        assert_eq!(strip_port("shop.example:8080"), "shop.example");
        assert_eq!(strip_port("shop.example"), "shop.example");
        assert_eq!(strip_port("[::1]:8080"), "::1");
    }

    #[test]
    fn an_authority_is_one_host_and_at_most_a_16_bit_port() {
        for good in [
            "shop.example",
            "shop.example:8080",
            "shop.example:",
            "127.0.0.1:65535",
            "a-b_c~d.e",
            "caf%C3%A9.example",
            "[::1]",
            "[::1]:443",
        ] {
            assert!(valid_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            ":80",
            "shop.example:65536",
            "shop.example:123456",
            "shop.example:8o",
            "shop.example:80:81",
            "user@shop.example",
            "shop example",
            "shop.example,evil.example",
            "caf%C.example",
            "caf%zz.example",
            "a%:b",
            "[]",
            "[::1",
            "[::1]x",
            "[g::1]",
            "shop.ex\u{e9}mple",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn cookie_affinity_reads_the_named_cookie() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; cart=xyz; b=2"));
        let k = affinity_key(&HashKey::Cookie("cart".into()), &h, "127.0.0.1".parse().unwrap());
        assert_eq!(k, Some(hash_bytes(b"xyz")));
        assert_eq!(
            affinity_key(&HashKey::Cookie("none".into()), &h, "127.0.0.1".parse().unwrap()),
            None
        );
    }
}
