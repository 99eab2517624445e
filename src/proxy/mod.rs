//! The per-request handler: route, admit, forward, respond.
//!
//! Data path. One [`Proxy`] service per client connection (a `tower`
//! service, served by hyper); for each request it:
//! 1. loads the live snapshot once and rejects ambiguous framing (400);
//! 2. routes host + path to a pool, enforcing the route's body limit (413);
//! 3. gets an in-flight slot from the pool's admission (pick, or queue);
//! 4. rewrites headers and sends the request over a pooled keep-alive
//!    connection; a connect failure (nothing sent) tries another backend;
//! 5. returns the backend's response with the slot moved into its body, so
//!    in-flight falls when the body has finished streaming;
//! 6. tunnels the connection both ways after a `101 Switching Protocols`.
//!
//! Every failure is a [`ProxyError`], turned into a response in one place.

pub mod body;
mod error;
pub mod headers;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

pub use body::{RequestBody, ResponseBody};
pub use error::ProxyError;

use crate::balance::{hash_bytes, Balancer, PickContext};
use crate::config::{HashKey, PoolConfig, UpstreamProtocol};
use crate::health;
use crate::pool::upstream::ConnectError;
use crate::pool::{backend, AdmitError, Backend};
use crate::queue::InFlight;
use crate::state::State;

/// The proxy service for one client connection.
#[derive(Clone)]
pub struct Proxy {
    conn: Arc<ConnContext>,
}

struct ConnContext {
    state: Arc<State>,
    client: SocketAddr,
    tls: bool,
}

impl Proxy {
    pub fn new(state: Arc<State>, client: SocketAddr, tls: bool) -> Proxy {
        Proxy {
            conn: Arc::new(ConnContext { state, client, tls }),
        }
    }
}

impl tower::Service<Request<Incoming>> for Proxy {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            Ok(match forward(&conn, req).await {
                Ok(resp) => resp,
                Err(e) => e.into_response(),
            })
        })
    }
}

async fn forward(conn: &ConnContext, mut req: Request<Incoming>) -> Result<Response<ResponseBody>, ProxyError> {
    let snapshot = conn.state.load();
    check_framing(&req)?;
    let target = snapshot
        .router
        .route(request_host(&req), req.uri().path())
        .ok_or(ProxyError::NoRoute)?;
    let pool = &snapshot.pools[target.pool];
    pool.shared.count_arrival();
    let cfg = &*pool.config;
    if content_length(req.headers()).is_some_and(|n| n > target.max_body) {
        return Err(ProxyError::PayloadTooLarge);
    }
    let upgrade = wants_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let hash = match pool.balancer {
        Balancer::Hash(_) => affinity_key(&cfg.hash_key, req.headers(), conn.client.ip()),
        _ => None,
    };
    let replayable = cfg.retry_idempotent && is_idempotent(req.method()) && has_no_body(&req);
    let mut first = upstream_request(req, upgrade, conn, cfg, target.max_body);
    first.body_mut().prime().await.map_err(|e| match e {
        body::RequestBodyError::TooLarge(_) => ProxyError::PayloadTooLarge,
        body::RequestBodyError::Client(_) => ProxyError::BadRequest("malformed request body"),
    })?;
    let mut request = Some(first);
    let replay = replayable.then(|| head_of(request.as_ref().expect("just built")));

    let mut rng = fastrand::Rng::new();
    let mut exclude: Vec<usize> = Vec::new();
    let mut connect_failures = 0;
    let mut replays_left = u32::from(replayable);
    let (mut snapshot, mut pool_index) = (snapshot, target.pool);
    loop {
        let pool = &snapshot.pools[pool_index];
        let cfg = &*pool.config;
        let mut cx = PickContext {
            rng: &mut rng,
            hash,
            exclude: &exclude,
        };
        let slot = match pool.admit(&mut cx).await {
            Ok(slot) => slot,
            Err(AdmitError::NoBackend) => {
                // A reload may have replaced every backend this snapshot
                // knows (they are draining now): route again on the live one.
                let fresh = conn.state.load();
                if fresh.generation == snapshot.generation {
                    return Err(ProxyError::NoBackend);
                }
                let req = request.as_ref().expect("not yet sent");
                let target = fresh
                    .router
                    .route(request_host(req), req.uri().path())
                    .ok_or(ProxyError::NoRoute)?;
                (snapshot, pool_index) = (fresh, target.pool);
                exclude.clear();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let backend = Arc::clone(slot.backend());
        let started = tokio::time::Instant::now();
        let outcome = send(cfg, &backend, request.take().expect("a request per attempt")).await;
        let elapsed_ns = started.elapsed().as_nanos() as u64;
        let status = outcome.as_ref().ok().map(|(r, _)| r.status().as_u16());
        let now_ns = backend::clock_ns();
        let decay_ns = crate::config::defaults::EWMA_DECAY.as_nanos() as f64;
        let class = backend.record(status, elapsed_ns, now_ns, decay_ns);
        pool.shared.record(class, elapsed_ns);
        let failed = match &outcome {
            Ok((r, _)) => r.status().is_server_error(),
            Err(SendError::Connect(..)) | Err(SendError::Timeout) => true,
            Err(SendError::Failed(e)) => !is_body_too_large(e),
        };
        health::passive_outcome(pool, &backend, failed, now_ns);
        match outcome {
            Ok((resp, sender)) => return Ok(respond(resp, sender, slot, client_upgrade)),
            Err(SendError::Connect(e, back)) => {
                tracing::debug!(backend = %backend.address, error = %e, "connect failed, trying another backend");
                connect_failures += 1;
                if connect_failures > cfg.connect_retries {
                    return Err(ProxyError::Connect(e));
                }
                exclude.extend(pool.index_of(&backend));
                request = Some(*back);
            }
            Err(SendError::Timeout) => return Err(ProxyError::ResponseTimeout),
            Err(SendError::Failed(e)) => {
                if is_body_too_large(&e) {
                    return Err(ProxyError::PayloadTooLarge);
                }
                match &replay {
                    Some(head) if replays_left > 0 => {
                        replays_left -= 1;
                        exclude.extend(pool.index_of(&backend));
                        request = Some(rebuild(head));
                    }
                    _ => return Err(ProxyError::Upstream(e)),
                }
            }
        }
    }
}

/// Ambiguous or malformed framing is refused before anything is sent.
/// (hyper already refuses conflicting `Content-Length` values, a
/// `Transfer-Encoding` not ending in `chunked`, bad chunk sizes and control
/// characters in fields.)
fn check_framing(req: &Request<Incoming>) -> Result<(), ProxyError> {
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
fn request_host<B>(req: &Request<B>) -> Option<&str> {
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

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        })
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

fn has_no_body<B: http_body::Body>(req: &Request<B>) -> bool {
    req.body().is_end_stream() || content_length(req.headers()) == Some(0)
}

fn affinity_key(key: &HashKey, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
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
fn upstream_request(
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
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

fn head_of(req: &Request<RequestBody>) -> Head {
    Head {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    }
}

fn rebuild(head: &Head) -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::empty());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}

enum SendError {
    /// Nothing reached the backend; the request comes back for a retry.
    Connect(ConnectError, Box<Request<RequestBody>>),
    Timeout,
    Failed(hyper::Error),
}

type Sent = (Response<Incoming>, Option<http1::SendRequest<RequestBody>>);

/// Sends one request to one backend. A pooled HTTP/1.1 connection that
/// turns out to be closed hands the request back unsent, and a fresh
/// connection is tried on the same backend.
async fn send(cfg: &PoolConfig, backend: &Backend, mut req: Request<RequestBody>) -> Result<Sent, SendError> {
    let up = &backend.upstream;
    let header_timeout = cfg.response_header_timeout;
    match cfg.upstream {
        UpstreamProtocol::Http1 => loop {
            let (mut sender, fresh) = match up.pooled_h1(cfg.idle_timeout).await {
                Some(s) => (s, false),
                None => match up.connect_h1(backend.address, cfg.connect_timeout).await {
                    Ok(s) => (s, true),
                    Err(e) => return Err(SendError::Connect(e, Box::new(req))),
                },
            };
            match tokio::time::timeout(header_timeout, sender.try_send_request(req)).await {
                Err(_) => return Err(SendError::Timeout),
                Ok(Ok(resp)) => return Ok((resp, Some(sender))),
                Ok(Err(mut e)) => match e.take_message() {
                    Some(back) if !fresh => req = back,
                    Some(back) => {
                        return Err(SendError::Connect(
                            ConnectError::Handshake(e.into_error()),
                            Box::new(back),
                        ))
                    }
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        },
        UpstreamProtocol::H2c => {
            let mut sender = match up.h2(backend.address, cfg.connect_timeout).await {
                Ok(s) => s,
                Err(e) => return Err(SendError::Connect(e, Box::new(req))),
            };
            match tokio::time::timeout(header_timeout, sender.try_send_request(req)).await {
                Err(_) => Err(SendError::Timeout),
                Ok(Ok(resp)) => Ok((resp, None)),
                Ok(Err(mut e)) => match e.take_message() {
                    Some(back) => Err(SendError::Connect(
                        ConnectError::Handshake(e.into_error()),
                        Box::new(back),
                    )),
                    None => Err(SendError::Failed(e.into_error())),
                },
            }
        }
    }
}

fn is_body_too_large(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<body::BodyTooLarge>().is_some()
            || matches!(
                s.downcast_ref::<body::RequestBodyError>(),
                Some(body::RequestBodyError::TooLarge(_))
            )
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// The client's response: the backend's head minus hop-by-hop fields, and
/// its body carrying the slot. A 101 to an upgrade request starts a tunnel
/// that holds the slot until either side closes.
fn respond(
    mut resp: Response<Incoming>,
    sender: Option<http1::SendRequest<RequestBody>>,
    slot: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResponseBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client, upstream, slot));
            let (mut parts, _) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(parts, ResponseBody::empty());
        }
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, ResponseBody::upstream(body, slot, sender))
}

async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, slot: InFlight) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded tunnel ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
    drop(slot);
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
