//! Preparing a client's request for a backend: framing checks, the host it
//! is for, the affinity key, and the rewritten request itself.
//!
//! Data path, pure functions over the request (no I/O): the handler in
//! `mod.rs` calls them in order before any backend is involved, so a
//! malformed request is refused (400) before a backend sees a byte.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri, Version};
use hyper::body::Incoming;

use super::error::ProxyError;
use super::headers;
use super::ConnContext;
use crate::balance::hash_bytes;
use crate::config::{HashKey, PoolConfig, UpstreamProtocol};
use crate::upstream::body::RequestBody;

/// Ambiguous or malformed framing is refused before anything is sent.
/// (hyper already refuses conflicting `Content-Length` values, a
/// `Transfer-Encoding` not ending in `chunked`, bad chunk sizes and control
/// characters in fields.)
pub(super) fn check_framing(req: &Request<Incoming>) -> Result<(), ProxyError> {
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest("both Content-Length and Transfer-Encoding"));
    }
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(ProxyError::BadRequest("more than one Content-Length"));
    }
    let hosts = h.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host"));
    }
    if hosts == 0 && req.version() == Version::HTTP_11 {
        return Err(ProxyError::BadRequest("HTTP/1.1 request without Host"));
    }
    Ok(())
}

/// The host the client asked for, without port: `:authority` for HTTP/2,
/// else the `Host` header.
pub(super) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.uri().authority() {
        Some(a) => a.host(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

pub(super) fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

pub(super) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
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
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| hash_bytes(v.as_bytes())),
    }
}

/// The request as the backend will see it: origin-form target, HTTP/1.1
/// (or HTTP/2 for h2c pools), hop-by-hop fields gone, forwarded-for added.
pub(super) fn upstream_request(
    req: Request<Incoming>,
    upgrade: bool,
    conn: &ConnContext,
    cfg: &PoolConfig,
    max_body: u64,
) -> Request<RequestBody> {
    let client_version = req.version();
    let (mut parts, body) = req.into_parts();
    if !parts.headers.contains_key(header::HOST) {
        if let Some(v) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, v);
        }
    }
    if headers::strip_hop_by_hop(&mut parts.headers, upgrade) {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // tidegate answers `Expect: 100-continue` itself (hyper sends the 100
    // when the body is first read, i.e. once a backend is ready for it).
    parts.headers.remove(header::EXPECT);
    let host = parts.headers.get(header::HOST).cloned();
    headers::add_forwarded(
        &mut parts.headers,
        conn.client.ip(),
        conn.tls,
        host.as_ref(),
        client_version,
    );
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match cfg.upstream {
        UpstreamProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            if parts.uri.authority().is_some() || parts.uri.scheme().is_some() {
                parts.uri = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
            }
        }
        UpstreamProtocol::H2c => {
            parts.version = Version::HTTP_2;
            let authority = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path)
                .build()
                .unwrap_or_else(|_| Uri::from_static("/"));
            parts.headers.remove(header::HOST);
        }
    }
    Request::from_parts(parts, RequestBody::new(body, max_body))
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
    fn strips_ports_from_hosts() {
        assert_eq!(strip_port("shop.example:8080"), "shop.example");
        assert_eq!(strip_port("shop.example"), "shop.example");
        assert_eq!(strip_port("[::1]:8080"), "::1");
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
