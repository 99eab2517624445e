//! The per-request handler: route, admit, forward, respond.
//!
//! Data path, above `pool/`, `balance/` and `upstream/`, below nothing but
//! `server/` (it never imports the control path). One [`Proxy`] service per
//! client connection (a `tower` service, served by hyper); for each request
//! it:
//! 1. loads the live snapshot once and rejects ambiguous framing (400,
//!    `request.rs`);
//! 2. routes host + path to a pool, enforcing the route's body limit (413)
//!    and the matching `[[rate_limit]]` rules (429, `request.rs`, before
//!    the pool counts an arrival: a refused flood buys no capacity);
//! 3. on a route with `cache = { ... }`, serves from the micro-cache or
//!    fetches once for everyone asking (`cached.rs`); a hit stops here,
//!    before the pool counts an arrival;
//! 4. gets an in-flight slot from the pool's admission (pick, or queue in
//!    the route's priority lane);
//! 5. rewrites headers and sends the request over a pooled keep-alive
//!    connection (`send.rs`); a connect failure (nothing sent) tries another
//!    backend;
//! 6. returns the backend's response with the slot moved into its body, so
//!    in-flight falls when the body has finished streaming;
//! 7. tunnels the connection both ways after a `101 Switching Protocols`
//!    (`upgrade.rs`).
//!
//! Every failure is a [`ProxyError`], turned into a response and counted
//! (per pool, or before routing) in one place: [`Proxy::call`].

pub(crate) mod body;
mod cached;
mod client;
pub(crate) mod conn;
mod error;
pub mod headers;
mod log;
mod request;
mod send;
mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

pub(crate) use body::ResponseBody;
pub(crate) use conn::{ClientConn, OpenExchange};
pub(crate) use error::{ProxyError, CLIENT_SEND_TIMEOUT, CODES, REASONS};

use crate::balance::{Balancer, PickContext};
use crate::clock::{clock_ns, clock_ns_at};
use crate::config::defaults::EWMA_DECAY;
use crate::config::Priority;
use crate::pool::backend::status_class;
use crate::pool::health::passive_outcome;
use crate::pool::{AdmitError, InFlight};
use crate::state::{Snapshot, State};
use crate::upstream::body::{ClientBody, RequestBody, Tallies};
use crate::upstream::{HeadLimits, UpstreamBody};
use request::{affinity_key, check_framing, has_no_body, head_of, rate_limit, rebuild, request_host, upstream_request};
use send::{body_error, client_fault, send, SendError};
use upgrade::{allowed_upgrade, switches_to, tunnel};

/// What [`Proxy::handle`] returns: the response, once it is known (the
/// error responses included, so it never fails).
pub(crate) type ProxyFuture = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

/// The proxy service for one client connection.
#[derive(Clone)]
pub(crate) struct Proxy {
    conn: Arc<ConnContext>,
}

pub(crate) struct ConnContext {
    state: Arc<State>,
    client: SocketAddr,
    /// The client's address as the `X-Forwarded-For` value it becomes.
    client_value: http::HeaderValue,
    tls: bool,
    /// What this connection's exchanges share with the server (the tunnel
    /// flag the framing guard reads, the HTTP/2 stall accounting).
    shared: Arc<ClientConn>,
}

impl Proxy {
    pub(crate) fn new(state: Arc<State>, client: SocketAddr, tls: bool, shared: Arc<ClientConn>) -> Proxy {
        Proxy {
            conn: Arc::new(ConnContext {
                state,
                client,
                client_value: headers::peer_value(client.ip()),
                tls,
                shared,
            }),
        }
    }

    /// The response to one request, from either protocol's server.
    pub(crate) fn handle(&self, req: Request<ClientBody>) -> ProxyFuture {
        let conn = Arc::clone(&self.conn);
        // Ends when the response body is dropped: until then the
        // connection is not at rest (hyper reads it while this is answered).
        let exchange = OpenExchange::new(&conn.shared);
        // Built where it lives: the future (several KB) is written into
        // its box by the call that makes it, not made on the stack and
        // copied in.
        Box::into_pin(in_box(|| handle(conn, req, exchange)))
    }
}

/// hyper's HTTP/1.1 server calls the proxy as a tower service.
impl tower::Service<Request<Incoming>> for Proxy {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.handle(req.map(ClientBody::H1))
    }
}

/// A box holding what `make` returns, written there by `make`.
fn in_box<T>(make: impl FnOnce() -> T) -> Box<T> {
    Box::write(Box::new_uninit(), make())
}

/// One request, from the client's head to the response handed to hyper.
async fn handle(
    conn: Arc<ConnContext>,
    mut req: Request<ClientBody>,
    exchange: OpenExchange,
) -> Result<Response<ResponseBody>, Infallible> {
    let snapshot = conn.state.load();
    let trusted = &snapshot.config.limits.trusted_proxies;
    let peer = conn.client.ip();
    let who = Who {
        trusted: client::is_trusted(trusted, peer),
        ip: client::client_ip(peer, req.headers(), trusted),
    };
    let request_id = client::request_id(req.headers_mut(), who.trusted);
    let mut logged = snapshot
        .access_log
        .as_ref()
        .map(|log| log::start(log, &req, &who, &request_id));
    let mut at = Place {
        snapshot,
        pool: None,
        route: 0,
        cache: None,
        backend: None,
        queued: Duration::ZERO,
        bytes_in: logged.as_ref().and_then(|l| l.bytes_in.clone()),
    };
    let resp = match forward(&conn, req, &who, &mut at).await {
        Ok(resp) => resp,
        Err(e) => {
            match at.pool {
                Some(i) => at.snapshot.pools[i].shared.count_error(e.index()),
                None => conn.state.count_error(e.index()),
            }
            if let Some(l) = &mut logged {
                l.outcome.error = Some(e.label());
                if let ProxyError::RateLimited { rule, .. } = &e {
                    l.outcome.rate_limit = Some(Arc::clone(rule));
                }
            }
            let mut resp = e.into_response();
            resp.headers_mut().insert(client::X_REQUEST_ID, request_id);
            resp
        }
    };
    let mut resp = resp;
    if let Some(outcome) = at.cache {
        resp.headers_mut()
            .insert(cached::X_CACHE, http::HeaderValue::from_static(outcome.header()));
    }
    resp.body_mut().hold(exchange);
    Ok(match logged {
        Some(mut l) => {
            log::respond(&mut l, &at, resp.status());
            resp.map(|body| body.logged(l))
        }
        None => resp,
    })
}

/// The client as one request sees it.
#[derive(Clone)]
pub(crate) struct Who {
    /// Whether the connection's peer (the socket's, or the PROXY
    /// header's) is a trusted proxy.
    trusted: bool,
    /// The client: the peer, or behind trusted proxies, whom they name.
    ip: IpAddr,
}

/// Where a request stands: the snapshot it uses and, once routed, its pool;
/// then the backend that answered and how long it queued for a slot.
pub(crate) struct Place {
    snapshot: Arc<Snapshot>,
    pool: Option<usize>,
    /// The route's index in the snapshot's config, once routed.
    route: usize,
    /// What the micro-cache did, on a cached route.
    cache: Option<crate::cache::Outcome>,
    backend: Option<SocketAddr>,
    queued: Duration,
    /// The access log's count of request body bytes, when logging.
    bytes_in: Option<Arc<AtomicU64>>,
}

impl Place {
    /// The route's class in the pool's queue, once routed (read from the
    /// snapshot's route, so a re-route on a newer snapshot is seen).
    fn priority(&self) -> Option<Priority> {
        self.pool.map(|_| self.snapshot.config.routes[self.route].priority)
    }

    /// A copy for a fetch that runs on its own task (it reports back the
    /// backend and queue time it had).
    fn fork(&self) -> Place {
        Place {
            snapshot: Arc::clone(&self.snapshot),
            pool: self.pool,
            route: self.route,
            cache: None,
            backend: None,
            queued: Duration::ZERO,
            bytes_in: None,
        }
    }
}

async fn forward(
    conn: &Arc<ConnContext>,
    req: Request<ClientBody>,
    who: &Who,
    at: &mut Place,
) -> Result<Response<ResponseBody>, ProxyError> {
    let framing = check_framing(&req)?;
    let host = framing.host;
    let target = at
        .snapshot
        .router
        .route(host, req.uri().path())
        .ok_or(ProxyError::NoRoute)?;
    at.pool = Some(target.pool);
    at.route = target.route;
    let snapshot = Arc::clone(&at.snapshot);
    let route = &snapshot.config.routes[target.route];
    if !snapshot.rate_limits.is_empty() {
        rate_limit(
            &snapshot.rate_limits,
            host,
            req.uri().path(),
            req.headers(),
            who.ip,
            clock_ns(),
        )?;
    }
    if framing.length.is_some_and(|n| n > route.max_body) {
        return Err(ProxyError::PayloadTooLarge);
    }
    if let (Some(policy), Some(cache)) = (&route.cache, &snapshot.cache) {
        // Boxed: the cache's future is the largest of the request's and
        // its path the rarer; inline it would size every request's box.
        return Box::pin(cached::serve(conn, req, who, at, policy, cache)).await;
    }
    upstream(conn, req, who, at).await
}

/// Sends the client's own request (body and upgrade included) to the
/// routed pool. Only here, and on a cache miss's fetch, does the pool count
/// an arrival: a cache hit is no demand the autoscaler should buy for.
async fn upstream(
    conn: &ConnContext,
    mut req: Request<ClientBody>,
    who: &Who,
    at: &mut Place,
) -> Result<Response<ResponseBody>, ProxyError> {
    let snapshot = Arc::clone(&at.snapshot);
    let route = &snapshot.config.routes[at.route];
    let pool = &snapshot.pools[at.pool.expect("routed")];
    pool.shared.count_arrival();
    let cfg = &*pool.config;
    let upgrade = allowed_upgrade(&req, &route.upgrade);
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let hash = affinity(pool, req.headers(), who);
    let replayable = cfg.retry_idempotent && req.method().is_idempotent() && has_no_body(&req);
    let idle = snapshot.config.limits.client_body_timeout;
    let tallies = Tallies {
        pool: (!http_body::Body::is_end_stream(req.body())).then(|| Arc::clone(&pool.shared.bytes_in)),
        request: at.bytes_in.clone(),
    };
    let req = req.map(|body| RequestBody::new(body, route.max_body, idle, tallies));
    let (mut first, forwarded) = upstream_request(req, upgrade.clone(), conn, who, cfg);
    first.body_mut().prime().await.map_err(|e| body_error(&e))?;
    let mut plan = Plan {
        hash,
        priority: route.priority,
        replay: replayable.then(|| head_of(&first)),
        forwarded,
        upgrade,
        client_upgrade,
    };
    attempts(conn, first, &mut plan, at).await
}

/// The affinity key of a request to a `hash` pool (`None` for any other).
fn affinity(pool: &crate::pool::Pool, headers: &http::HeaderMap, who: &Who) -> Option<u64> {
    match pool.balancer {
        Balancer::Hash(_) => affinity_key(&pool.config.hash_key, headers, who.ip),
        _ => None,
    }
}

/// What the attempts at one request need besides the request itself.
struct Plan {
    /// The affinity key, for a `hash` pool.
    hash: Option<u64>,
    priority: Priority,
    /// The head to resend after a mid-exchange failure, when allowed.
    replay: Option<request::Head>,
    /// The forwarded-for fields every attempt adds.
    forwarded: headers::Forwarded,
    /// The protocol the request may switch to, and the client's side of it.
    upgrade: Option<http::HeaderValue>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Admission, send, and the retries the pool allows, for a request
/// already rewritten for the backend.
async fn attempts(
    conn: &ConnContext,
    first: Request<RequestBody>,
    plan: &mut Plan,
    at: &mut Place,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Borrowed, not moved: the plan stays in the caller's future, and this
    // one (moved into its caller's when made) is the smaller for it.
    let Plan {
        hash,
        priority,
        ref replay,
        ref forwarded,
        ref upgrade,
        ref mut client_upgrade,
    } = *plan;
    let mut request = Some(first);
    let mut rng = fastrand::Rng::new();
    let mut tried: Vec<usize> = Vec::new();
    let mut connect_failures = 0;
    let mut replays_left = u32::from(replay.is_some());
    let started = tokio::time::Instant::now();
    loop {
        let snapshot = Arc::clone(&at.snapshot);
        let pool = &snapshot.pools[at.pool.expect("routed")];
        let cfg = &*pool.config;
        let mut cx = PickContext {
            rng: &mut rng,
            hash,
            exclude: &tried,
        };
        let asked = tokio::time::Instant::now();
        let admitted = pool.admit(&mut cx, priority).await;
        let slot = match admitted {
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
                at.snapshot = fresh;
                at.pool = Some(target.pool);
                at.route = target.route;
                tried.clear();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let backend = Arc::clone(slot.backend());
        at.backend = Some(backend.address);
        let sent_at = tokio::time::Instant::now();
        at.queued += sent_at - asked;
        let head = HeadLimits {
            bytes: snapshot.config.limits.max_response_header_bytes,
            fields: snapshot.config.limits.max_response_headers,
        };
        let req = request.take().expect("a request per attempt");
        let mut outcome = send(cfg, head, &backend, req, forwarded).await;
        // One clock reading for the backend's latency, its EWMA's stamp and
        // the pool's total.
        let answered = tokio::time::Instant::now();
        let elapsed_ns = (answered - sent_at).as_nanos() as u64;
        // A 101 the request did not ask for (or to another protocol) is
        // never passed on: it would open a tunnel past routing and limits.
        if let Ok(resp) = &outcome {
            let asked = upgrade.as_ref().filter(|_| client_upgrade.is_some());
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if !asked.is_some_and(|a| switches_to(resp, a)) {
                    outcome = Err(SendError::Invalid("a 101 the request did not ask for"));
                } else if !resp.body().can_upgrade() {
                    // Over h2c, or before the request body was all sent:
                    // there is no clean stream to tunnel.
                    outcome = Err(SendError::Invalid("a 101 with no connection to switch"));
                }
            }
        }
        let status = outcome.as_ref().ok().map(|r| r.status().as_u16());
        let now_ns = clock_ns_at(answered);
        backend.record(status, elapsed_ns, now_ns, EWMA_DECAY.as_nanos() as f64);
        // Only what the backend caused counts toward its ejection; a client
        // that aborts or fumbles its upload never blames the backend.
        let client = match &outcome {
            Err(SendError::Failed(e)) => client_fault(e),
            _ => None,
        };
        // Nor does tidegate running out of descriptors or ports.
        let local = matches!(&outcome, Err(SendError::Connect(e, _)) if e.is_local());
        if client.is_none() && !local {
            let failed = match &outcome {
                Ok(r) => r.status().is_server_error(),
                Err(_) => true,
            };
            passive_outcome(pool, &backend, failed, now_ns);
        }
        // The pool counts one request however many backends it tried.
        let done = |status: Option<u16>| {
            let total_ns = (answered - started).as_nanos() as u64;
            pool.shared.record(status_class(status), total_ns);
        };
        match outcome {
            Ok(resp) => {
                done(status);
                let limits = &snapshot.config.limits;
                let exchange = Exchange {
                    client: &conn.shared,
                    read_timeout: cfg.read_timeout,
                    tunnel_idle: limits.tunnel_idle_timeout,
                };
                return Ok(respond(resp, slot, client_upgrade.take(), exchange));
            }
            Err(SendError::Connect(e, back)) => {
                tracing::debug!(backend = %backend.address, error = %e, "connect failed");
                connect_failures += 1;
                tried.extend(pool.index_of(&backend));
                // Retry only on a backend not tried yet: a pool of one dead
                // backend is one failed attempt, not three.
                if connect_failures > cfg.connect_retries || !pool.has_untried(&tried) {
                    done(None);
                    return Err(ProxyError::Connect(e));
                }
                request = Some(*back);
            }
            Err(SendError::Timeout) => {
                done(None);
                return Err(ProxyError::ResponseTimeout);
            }
            Err(SendError::Invalid(why)) => {
                done(None);
                return Err(ProxyError::UpstreamInvalid(why));
            }
            Err(SendError::Failed(e)) => {
                if let Some(client) = client {
                    done(None);
                    return Err(client);
                }
                tried.extend(pool.index_of(&backend));
                match &replay {
                    Some(head) if replays_left > 0 && pool.has_untried(&tried) => {
                        replays_left -= 1;
                        request = Some(rebuild(head));
                    }
                    _ => {
                        done(None);
                        return Err(ProxyError::Upstream(e));
                    }
                }
            }
        }
    }
}

/// What a response needs to know of its connection and limits.
struct Exchange<'a> {
    client: &'a Arc<ClientConn>,
    read_timeout: std::time::Duration,
    tunnel_idle: std::time::Duration,
}

/// The client's response: the backend's head minus hop-by-hop fields, and
/// its body carrying the slot. A 101 (already checked to switch to the
/// protocol asked for) starts a tunnel that holds the slot until either
/// side closes or it idles out, and tells the connection's framing guard
/// to step aside.
fn respond(
    resp: Response<UpstreamBody>,
    slot: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    exchange: Exchange<'_>,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // `attempts` passes on only a 101 that was asked for, on an
        // HTTP/1.1 connection free to switch.
        let upstream = body.upgraded();
        if let (Some(client), Some(upstream)) = (client_upgrade, upstream) {
            exchange.client.switched.store(true, Ordering::Release);
            tokio::spawn(tunnel(client, upstream, slot, exchange.tunnel_idle));
        }
        headers::strip_hop_by_hop(&mut parts.headers, true);
        return Response::from_parts(parts, ResponseBody::empty());
    }
    headers::strip_hop_by_hop(&mut parts.headers, false);
    let body = ResponseBody::upstream(body, slot, Arc::clone(exchange.client), exchange.read_timeout);
    Response::from_parts(parts, body)
}
